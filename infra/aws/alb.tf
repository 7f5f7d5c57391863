resource "aws_lb" "relay" {
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is the operator's choice and cost; attach one with aws_wafv2_web_acl_association (docs/deploy.md). The relay itself limits publish rates and connections per client.
  #checkov:skip=CKV_AWS_91:Access logs need an S3 bucket with its own policy; set alb_access_logs_bucket to turn them on.
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  # Idle WebSockets carry a ping every 25 s (RELAY_PING_SECS) and SSE a
  # comment every 15 s; 120 s outlasts a missed ping or two.
  idle_timeout = 120

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == "" ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "relay" {
  name        = var.name
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # Longer than the drain window: ECS waits for it before SIGTERM, and the
  # load balancer keeps the task's open connections until it ends.
  deregistration_delay = var.drain_seconds + 5

  health_check {
    path                = "/readyz"
    matcher             = "200"
    interval            = 5
    timeout             = 2
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  # WebSockets need no stickiness: a client resumes on any task.
  stickiness {
    type    = "lb_cookie"
    enabled = false
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.relay.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.relay.arn
  }
}
