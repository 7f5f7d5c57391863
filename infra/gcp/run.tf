locals {
  tracing = var.otel_collector_image != ""
}

resource "google_cloud_run_v2_service" "relay" {
  name                = var.name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = true

  template {
    service_account = google_service_account.relay.email
    # Each WebSocket or SSE stream is one request; it may last this long.
    timeout                          = "${var.request_timeout_seconds}s"
    max_instance_request_concurrency = var.concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    # A client that reconnects lands on any instance and resumes.
    session_affinity = false

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = var.network
        subnetwork = google_compute_subnetwork.relay.id
      }
    }

    volumes {
      name = "redis-ca"
      secret {
        secret = google_secret_manager_secret.redis_ca.secret_id
        items {
          version = "latest"
          path    = "ca.pem"
        }
      }
    }

    containers {
      name  = "relay"
      image = var.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        # Open sockets need CPU between requests (pings, fan-out).
        cpu_idle          = false
        startup_cpu_boost = true
      }

      env {
        name  = "RELAY_LISTEN"
        value = "0.0.0.0:8080"
      }
      env {
        name  = "RELAY_LOG_FORMAT"
        value = "json"
      }
      env {
        name  = "RELAY_AUTH"
        value = "jwt"
      }
      env {
        name  = "RELAY_DRAIN_SECS"
        value = tostring(var.drain_seconds)
      }
      env {
        name  = "RELAY_MAX_CONNECTIONS"
        value = tostring(var.concurrency)
      }
      env {
        name  = "RELAY_ALLOWED_ORIGINS"
        value = var.allowed_origins
      }
      # Cloud Run's front end carries every client's socket from a few
      # addresses: a per-address cap would refuse clients, not an attacker.
      env {
        name  = "RELAY_MAX_SOCKETS_PER_ADDRESS"
        value = "0"
      }
      # The Standard tier and every cluster shard have a replica: acknowledge
      # a message once it holds it (docs/cluster.md). The relay refuses to
      # start, with one line, if the service blocks WAIT.
      env {
        name  = "RELAY_REDIS_MIN_REPLICAS_ACKED"
        value = tostring(var.min_replicas_acked)
      }
      env {
        name  = "RELAY_REDIS_CA_FILE"
        value = "/secrets/redis-ca/ca.pem"
      }
      env {
        name  = "RELAY_REDIS_CLUSTER"
        value = tostring(var.cache_cluster)
      }
      dynamic "env" {
        for_each = var.jwt_issuer == "" ? [] : [var.jwt_issuer]
        content {
          name  = "RELAY_JWT_ISSUER"
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.tracing ? { OTEL_EXPORTER_OTLP_ENDPOINT = "http://127.0.0.1:4318", OTEL_SERVICE_NAME = var.name } : {}
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name = "RELAY_JWT_SECRET"
        value_source {
          secret_key_ref {
            secret  = var.jwt_secret_id
            version = "latest"
          }
        }
      }
      env {
        name = "REDIS_URL"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.redis_url.secret_id
            version = "latest"
          }
        }
      }

      volume_mounts {
        name       = "redis-ca"
        mount_path = "/secrets/redis-ca"
      }

      # Ready once Redis answers; Cloud Run sends no traffic before.
      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 1
        timeout_seconds   = 1
        failure_threshold = 30
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 10
        timeout_seconds   = 2
        failure_threshold = 3
      }

      depends_on = local.tracing ? ["otel-collector"] : []
    }

    dynamic "containers" {
      for_each = local.tracing ? [var.otel_collector_image] : []
      content {
        name  = "otel-collector"
        image = containers.value
        resources {
          limits = {
            cpu    = "0.5"
            memory = "256Mi"
          }
        }
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.relay_reads]
}

resource "google_cloud_run_v2_service_iam_member" "public" {
  #checkov:skip=CKV_GCP_102:A public chat endpoint; every connection is authenticated by the relay's own JWT check (RELAY_AUTH=jwt). Set public = false to keep Cloud Run's IAM in front.
  count    = var.public ? 1 : 0
  name     = google_cloud_run_v2_service.relay.name
  location = google_cloud_run_v2_service.relay.location
  role     = "roles/run.invoker"
  member   = "allUsers"
}
