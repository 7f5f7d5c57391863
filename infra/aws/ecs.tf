resource "aws_ecs_cluster" "relay" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

locals {
  tracing = var.otel_collector_image != ""

  relay_environment = concat(
    [
      { name = "RELAY_LISTEN", value = "0.0.0.0:8080" },
      { name = "RELAY_LOG_FORMAT", value = "json" },
      { name = "RELAY_AUTH", value = "jwt" },
      { name = "RELAY_DRAIN_SECS", value = tostring(var.drain_seconds) },
      { name = "RELAY_MAX_CONNECTIONS", value = tostring(var.max_connections_per_task) },
      { name = "RELAY_HISTORY_MAXLEN", value = tostring(var.history_maxlen) },
      { name = "RELAY_REDIS_CLUSTER", value = tostring(var.cache_cluster_mode) },
      { name = "RELAY_ALLOWED_ORIGINS", value = var.allowed_origins },
      # Behind a load balancer every client shares its address; the per-client
      # cap keys by token subject with RELAY_AUTH=jwt, so it stays useful.
      { name = "RELAY_MAX_CONNECTIONS_PER_CLIENT", value = "100" },
      # The load balancer's few addresses carry every client's sockets: a
      # per-address cap would refuse the fleet's clients, not an attacker.
      { name = "RELAY_MAX_SOCKETS_PER_ADDRESS", value = "0" },
      # Every shard has a replica: acknowledge a message once it holds it,
      # so a failover loses no acknowledged message (docs/cluster.md).
      { name = "RELAY_REDIS_MIN_REPLICAS_ACKED", value = tostring(var.min_replicas_acked) },
    ],
    var.jwt_issuer == "" ? [] : [{ name = "RELAY_JWT_ISSUER", value = var.jwt_issuer }],
    var.jwt_audience == "" ? [] : [{ name = "RELAY_JWT_AUDIENCE", value = var.jwt_audience }],
    local.tracing ? [
      { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = "http://127.0.0.1:4318" },
      { name = "OTEL_SERVICE_NAME", value = var.name },
      { name = "OTEL_TRACES_SAMPLER", value = "parentbased_traceidratio" },
      { name = "OTEL_TRACES_SAMPLER_ARG", value = tostring(var.trace_sample_ratio) },
    ] : [],
  )

  log_configuration = {
    logDriver = "awslogs"
    options = {
      "awslogs-group"         = aws_cloudwatch_log_group.relay.name
      "awslogs-region"        = var.region
      "awslogs-stream-prefix" = "relay"
    }
  }

  relay_container = {
    name      = "relay"
    image     = var.image
    essential = true
    portMappings = [
      { containerPort = 8080, protocol = "tcp" },
    ]
    environment = local.relay_environment
    secrets = [
      { name = "RELAY_JWT_SECRET", valueFrom = var.jwt_secret_arn },
      { name = "REDIS_URL", valueFrom = aws_secretsmanager_secret.redis_url.arn },
    ]
    # Each WebSocket is a file descriptor.
    ulimits = [
      { name = "nofile", softLimit = 65536, hardLimit = 65536 },
    ]
    readonlyRootFilesystem = true
    user                   = "65532:65532"
    # SIGTERM starts the drain; ECS waits this long before SIGKILL.
    stopTimeout      = var.drain_seconds + 5
    logConfiguration = local.log_configuration
    dependsOn        = local.tracing ? [{ containerName = "otel-collector", condition = "START" }] : []
  }

  collector_container = {
    name                   = "otel-collector"
    image                  = var.otel_collector_image
    essential              = false
    command                = ["--config=/etc/ecs/ecs-default-config.yaml"]
    readonlyRootFilesystem = true
    logConfiguration       = merge(local.log_configuration, { options = merge(local.log_configuration.options, { "awslogs-stream-prefix" = "otel" }) })
  }
}

resource "aws_ecs_task_definition" "relay" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode(local.tracing ? [local.relay_container, local.collector_container] : [local.relay_container])
}

resource "aws_ecs_service" "relay" {
  name                              = var.name
  cluster                           = aws_ecs_cluster.relay.id
  task_definition                   = aws_ecs_task_definition.relay.arn
  launch_type                       = "FARGATE"
  desired_count                     = var.min_tasks
  health_check_grace_period_seconds = 15
  # New tasks first, then old ones drain: capacity never dips in a deploy.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  enable_execute_command             = false
  propagate_tags                     = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.relay.arn
    container_name   = "relay"
    container_port   = 8080
  }

  # Autoscaling owns the count after the first apply.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.https]
}
