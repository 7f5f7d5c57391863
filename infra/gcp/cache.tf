# One primary with a replica in another zone, TLS in transit, AUTH on;
# or, with cache_cluster, Memorystore for Redis Cluster (below).
resource "google_redis_instance" "relay" {
  count                   = var.cache_cluster ? 0 : 1
  name                    = var.name
  region                  = var.region
  tier                    = "STANDARD_HA"
  memory_size_gb          = var.cache_memory_gb
  redis_version           = "REDIS_7_2"
  authorized_network      = var.network
  connect_mode            = "PRIVATE_SERVICE_ACCESS"
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"
  display_name            = "${var.name}: room history streams and live Pub/Sub"

  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours   = 3
        minutes = 0
      }
    }
  }
}

moved {
  from = google_redis_instance.relay
  to   = google_redis_instance.relay[0]
}

# Memorystore for Redis Cluster: cache_shards shards with
# cache_replicas_per_shard replicas each, reached over Private Service
# Connect in the relay's network, TLS in transit. Its only password is an
# IAM access token that expires within the hour, which the relay does not
# fetch, so authorization is off and the cluster is reachable only from the
# network's PSC endpoints (the subnet below); TLS still authenticates the
# server. Memorystore does not let cluster-require-full-coverage be set: during
# a shard's failover the other shards may refuse too (the relay re-sends,
# then answers unavailable with stored: false).
resource "google_redis_cluster" "relay" {
  count                       = var.cache_cluster ? 1 : 0
  name                        = var.name
  region                      = var.region
  shard_count                 = var.cache_shards
  replica_count               = var.cache_replicas_per_shard
  node_type                   = "REDIS_HIGHMEM_MEDIUM"
  authorization_mode          = "AUTH_MODE_DISABLED"
  transit_encryption_mode     = "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"
  deletion_protection_enabled = true

  psc_configs {
    network = var.network
  }

  depends_on = [google_network_connectivity_service_connection_policy.cache]
}

# Lets Memorystore create its PSC endpoints in the relay's subnet.
resource "google_network_connectivity_service_connection_policy" "cache" {
  count         = var.cache_cluster ? 1 : 0
  name          = "${var.name}-memorystore"
  location      = var.region
  service_class = "gcp-memorystore-redis"
  network       = var.network

  psc_config {
    subnetworks = [google_compute_subnetwork.relay.id]
  }
}

locals {
  # REDIS_URL and the CA of whichever cache the stack runs. The cluster's
  # discovery endpoint is its seed node.
  redis_url = var.cache_cluster ? (
    "rediss://${google_redis_cluster.relay[0].discovery_endpoints[0].address}:${google_redis_cluster.relay[0].discovery_endpoints[0].port}"
    ) : (
    "rediss://:${google_redis_instance.relay[0].auth_string}@${google_redis_instance.relay[0].host}:${google_redis_instance.relay[0].port}"
  )
  redis_ca = var.cache_cluster ? join("\n", flatten([
    for ca in google_redis_cluster.relay[0].managed_server_ca : [for chain in ca.ca_certs : chain.certificates]
  ])) : join("\n", [for ca in google_redis_instance.relay[0].server_ca_certs : ca.cert])
  cache_host = var.cache_cluster ? google_redis_cluster.relay[0].discovery_endpoints[0].address : google_redis_instance.relay[0].host
}
