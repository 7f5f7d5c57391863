resource "aws_elasticache_subnet_group" "relay" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
}

# The AUTH token lives in the state and in Secrets Manager; keep the state
# encrypted (an S3 backend with KMS) as for any stack with a database.
resource "random_password" "cache_auth" {
  length  = 64
  special = false
}

# One shard (a primary and a replica in another zone) by default; with
# cache_cluster_mode, cache_shards shards of a primary and
# cache_replicas_per_shard replicas each, and the relay in cluster mode
# (docs/cluster.md). A room's stream, channel and keys share a hash tag, so
# a room lives on one shard either way. ElastiCache does not let
# cluster-require-full-coverage be changed: while a shard has no primary
# (the seconds of a failover) the other shards may answer CLUSTERDOWN too,
# which the relay re-sends and then answers unavailable (stored: false).
resource "aws_elasticache_replication_group" "relay" {
  replication_group_id       = var.name
  description                = "${var.name}: room history streams and live Pub/Sub"
  engine                     = var.cache_engine
  engine_version             = var.cache_engine_version
  node_type                  = var.cache_node_type
  port                       = 6379
  num_cache_clusters         = var.cache_cluster_mode ? null : 2
  num_node_groups            = var.cache_cluster_mode ? var.cache_shards : null
  replicas_per_node_group    = var.cache_cluster_mode ? var.cache_replicas_per_shard : null
  parameter_group_name       = var.cache_cluster_mode ? "default.${var.cache_engine}7.cluster.on" : null
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.relay.name
  security_group_ids         = [aws_security_group.cache.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.relay.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.cache_auth.result
  auth_token_update_strategy = "ROTATE"
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
  apply_immediately          = false
}
