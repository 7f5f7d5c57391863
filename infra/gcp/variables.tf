variable "project_id" {
  description = "Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the service, its subnet and the cache."
  type        = string
  default     = "europe-west1"
}

variable "name" {
  description = "Prefix of every resource name (lower-case letters, digits and hyphens)."
  type        = string
  default     = "chat-relay"
}

variable "image" {
  description = "The relay's container image (built from the repository's Dockerfile, pushed to Artifact Registry)."
  type        = string
}

variable "network" {
  description = "VPC network (self link or name) that holds the relay's subnet and the cache; it needs private services access for Memorystore."
  type        = string
}

variable "subnet_cidr" {
  description = "Range of the subnet the instances use for Direct VPC egress; Cloud Run takes up to four addresses per instance, so size it above four times max_instances."
  type        = string
  default     = "10.80.0.0/24"
}

variable "min_instances" {
  description = "Instances kept warm; two keep a node's departure invisible (its clients have somewhere to resume)."
  type        = number
  default     = 2
}

variable "max_instances" {
  description = "Most instances autoscaling may run."
  type        = number
  default     = 20
}

variable "concurrency" {
  description = "Requests (each WebSocket or SSE stream is one) per instance; Cloud Run scales out on it. Cloud Run's ceiling is 1000."
  type        = number
  default     = 1000
}

variable "cpu" {
  description = "vCPUs per instance."
  type        = string
  default     = "1"
}

variable "memory" {
  description = "Memory per instance."
  type        = string
  default     = "1Gi"
}

variable "request_timeout_seconds" {
  description = "Longest life of one WebSocket or SSE stream before Cloud Run ends it (clients then resume); 3600 is Cloud Run's ceiling."
  type        = number
  default     = 3600
}

variable "drain_seconds" {
  description = "RELAY_DRAIN_SECS; Cloud Run sends SIGKILL 10 s after SIGTERM, so at most 8 leaves room to exit."
  type        = number
  default     = 8
}

variable "allowed_origins" {
  description = "RELAY_ALLOWED_ORIGINS: comma-separated browser origins allowed to connect."
  type        = string
}

variable "jwt_secret_id" {
  description = "Secret Manager secret (id, in this project) holding RELAY_JWT_SECRET, created outside Terraform so its value never enters the state."
  type        = string
}

variable "jwt_issuer" {
  description = "RELAY_JWT_ISSUER: required iss claim, or empty."
  type        = string
  default     = ""
}

variable "cache_memory_gb" {
  description = "Memorystore capacity in GB."
  type        = number
  default     = 5
}

variable "otel_collector_image" {
  description = "OpenTelemetry collector sidecar image (receives OTLP/HTTP on 127.0.0.1:4318); empty for no tracing. Its configuration is the image's own."
  type        = string
  default     = ""
}

variable "public" {
  description = "Let anyone reach the service (the relay checks its own JWTs); false keeps Cloud Run's IAM check in front."
  type        = bool
  default     = true
}

variable "cache_cluster" {
  description = "Use Memorystore for Redis Cluster (sharded Pub/Sub, RELAY_REDIS_CLUSTER=true) instead of one Memorystore instance, once one is not enough: see docs/cluster.md."
  type        = bool
  default     = false
}

variable "cache_shards" {
  description = "Shards of the Memorystore cluster; rooms spread over them by hash slot."
  type        = number
  default     = 3
}

variable "cache_replicas_per_shard" {
  description = "Replicas of each shard in the Memorystore cluster (0 to 2; at least 1 for automatic failover)."
  type        = number
  default     = 1
}

variable "min_replicas_acked" {
  description = "RELAY_REDIS_MIN_REPLICAS_ACKED: replicas that must confirm a message before it is acknowledged, so that a failover loses no acknowledged message (1: the replica every shard has; 0: the primary's answer is enough, a little faster)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_replicas_acked >= 0 && var.min_replicas_acked <= 5
    error_message = "Use 0 to 5, and no more than the replicas the instance or each shard has."
  }
}
