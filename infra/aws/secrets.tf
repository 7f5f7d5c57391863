# REDIS_URL with the AUTH token, handed to the tasks as a secret.
resource "aws_secretsmanager_secret" "redis_url" {
  #checkov:skip=CKV2_AWS_57:The token rotates with the cache (auth_token_update_strategy ROTATE, then a new secret version and a deployment); Secrets Manager's Lambda rotation cannot update ElastiCache in step.
  name                    = "${var.name}/redis-url"
  description             = "REDIS_URL of the relay: rediss:// with the cache AUTH token"
  kms_key_id              = aws_kms_key.relay.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "redis_url" {
  secret_id = aws_secretsmanager_secret.redis_url.id
  # In cluster mode the configuration endpoint is the seed node.
  secret_string = "rediss://:${random_password.cache_auth.result}@${var.cache_cluster_mode ? aws_elasticache_replication_group.relay.configuration_endpoint_address : aws_elasticache_replication_group.relay.primary_endpoint_address}:6379"
}
