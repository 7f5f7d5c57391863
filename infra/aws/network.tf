resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Clients to the load balancer (HTTPS only)"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTPS and wss:// from clients"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.ingress_cidrs
  }

  egress {
    description = "To the relay tasks"
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.selected.cidr_block]
  }
}

data "aws_vpc" "selected" {
  id = var.vpc_id
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "Relay tasks: reached by the load balancer only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "HTTP and WebSockets from the load balancer"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }

  egress {
    description = "Image pull, Secrets Manager, CloudWatch, X-Ray (HTTPS)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "The cache"
    from_port   = 6379
    to_port     = 6379
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.selected.cidr_block]
  }
}

resource "aws_security_group" "cache" {
  name        = "${var.name}-cache"
  description = "The cache: reached by the relay tasks only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Redis protocol over TLS from the relay tasks"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
}
