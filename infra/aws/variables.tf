variable "name" {
  description = "Prefix of every resource name (letters, digits and hyphens)."
  type        = string
  default     = "chat-relay"
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC that holds the load balancer, the tasks and the cache."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets (two or more zones) for the internet-facing load balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets (two or more zones) for the tasks and the cache; they need a NAT gateway or VPC endpoints to pull the image and reach Secrets Manager and CloudWatch."
  type        = list(string)
}

variable "ingress_cidrs" {
  description = "Client networks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate of the public host name, for the HTTPS listener (WebSockets use wss:// through it)."
  type        = string
}

variable "image" {
  description = "The relay's container image (built from the repository's Dockerfile), pinned by digest or tag."
  type        = string
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64, matching the image."
  type        = string
  default     = "X86_64"
}

variable "task_cpu" {
  description = "Fargate task CPU units (1024 = one vCPU)."
  type        = number
  default     = 1024
}

variable "task_memory" {
  description = "Fargate task memory in MiB."
  type        = number
  default     = 2048
}

variable "min_tasks" {
  description = "Fewest tasks; two keep a node's departure invisible (its clients have somewhere to resume)."
  type        = number
  default     = 2
}

variable "max_tasks" {
  description = "Most tasks autoscaling may run."
  type        = number
  default     = 20
}

variable "cpu_target_percent" {
  description = "Average CPU the service scales to hold."
  type        = number
  default     = 60
}

variable "max_connections_per_task" {
  description = "RELAY_MAX_CONNECTIONS: a task answers 503 past it."
  type        = number
  default     = 10000
}

variable "connections_target_per_task" {
  description = "Connections per task the service scales to hold; well under max_connections_per_task so that a scale-out lands before tasks refuse clients."
  type        = number
  default     = 5000
}

variable "drain_seconds" {
  description = "RELAY_DRAIN_SECS: how long a stopping task spreads its clients' reconnects over."
  type        = number
  default     = 8
}

variable "allowed_origins" {
  description = "RELAY_ALLOWED_ORIGINS: comma-separated browser origins allowed to connect."
  type        = string
}

variable "jwt_secret_arn" {
  description = "ARN of the Secrets Manager secret holding RELAY_JWT_SECRET (at least 32 bytes), created outside Terraform so its value never enters the state."
  type        = string
}

variable "jwt_issuer" {
  description = "RELAY_JWT_ISSUER: required iss claim, or empty."
  type        = string
  default     = ""
}

variable "jwt_audience" {
  description = "RELAY_JWT_AUDIENCE: required aud claim, or empty."
  type        = string
  default     = ""
}

variable "history_maxlen" {
  description = "RELAY_HISTORY_MAXLEN: messages kept per room."
  type        = number
  default     = 10000
}

variable "cache_engine" {
  description = "valkey or redis."
  type        = string
  default     = "valkey"
}

variable "cache_engine_version" {
  description = "Engine version (7.2 or later)."
  type        = string
  default     = "7.2"
}

variable "cache_node_type" {
  description = "ElastiCache node type; one primary and one replica in another zone."
  type        = string
  default     = "cache.r7g.large"
}

variable "cache_cluster_mode" {
  description = "Run ElastiCache in cluster mode (sharded Pub/Sub, RELAY_REDIS_CLUSTER=true) once one shard is not enough: see docs/cluster.md."
  type        = bool
  default     = false
}

variable "cache_shards" {
  description = "Shards (node groups) in cluster mode; rooms spread over them by hash slot."
  type        = number
  default     = 3
}

variable "cache_replicas_per_shard" {
  description = "Replicas of each shard's primary in cluster mode (at least 1 for automatic failover)."
  type        = number
  default     = 1

  validation {
    condition     = var.cache_replicas_per_shard >= 1 && var.cache_replicas_per_shard <= 5
    error_message = "Use 1 to 5 replicas per shard: automatic failover needs one."
  }
}

variable "log_retention_days" {
  description = "CloudWatch retention of the relay's JSON logs."
  type        = number
  default     = 30
}

variable "otel_collector_image" {
  description = "OpenTelemetry collector sidecar image (receives OTLP/HTTP on 127.0.0.1:4318 and exports to X-Ray); empty for no tracing."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
}

variable "trace_sample_ratio" {
  description = "Share of publishes traced (OTEL_TRACES_SAMPLER_ARG of parentbased_traceidratio)."
  type        = number
  default     = 0.05
}

variable "alb_access_logs_bucket" {
  description = "S3 bucket for the load balancer's access logs, or empty for none."
  type        = string
  default     = ""
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "min_replicas_acked" {
  description = "RELAY_REDIS_MIN_REPLICAS_ACKED: replicas that must confirm a message before it is acknowledged, so that a failover loses no acknowledged message (1: the replica every shard has; 0: the primary's answer is enough, a little faster)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_replicas_acked >= 0 && var.min_replicas_acked <= 5
    error_message = "Use 0 to 5, and no more than the replicas each shard has."
  }
}
