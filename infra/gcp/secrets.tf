resource "google_service_account" "relay" {
  account_id   = var.name
  display_name = "chat-relay instances"
}

# REDIS_URL with the AUTH string, and the CA that signs Memorystore's server
# certificate (RELAY_REDIS_CA_FILE). Both values live in the state: keep it
# in an encrypted bucket, as for any stack with a database.
resource "google_secret_manager_secret" "redis_url" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; a customer key is the operator's choice (add customer_managed_encryption).
  secret_id = "${var.name}-redis-url"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "redis_url" {
  secret      = google_secret_manager_secret.redis_url.id
  secret_data = local.redis_url
}

resource "google_secret_manager_secret" "redis_ca" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the CA certificate is public material.
  secret_id = "${var.name}-redis-ca"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "redis_ca" {
  secret      = google_secret_manager_secret.redis_ca.id
  secret_data = local.redis_ca
}

resource "google_secret_manager_secret_iam_member" "relay_reads" {
  for_each  = toset([google_secret_manager_secret.redis_url.secret_id, google_secret_manager_secret.redis_ca.secret_id, var.jwt_secret_id])
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.relay.email}"
}

resource "google_project_iam_member" "relay_traces" {
  count   = var.otel_collector_image == "" ? 0 : 1
  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = "serviceAccount:${google_service_account.relay.email}"
}
