output "url" {
  description = "Base URL of the relay (WebSockets at wss://<host>/v1/ws)."
  value       = google_cloud_run_v2_service.relay.uri
}

output "cache_host" {
  description = "Private address of the Memorystore instance (TLS, AUTH), or the cluster's discovery endpoint (TLS)."
  value       = local.cache_host
}

output "service_account" {
  description = "Identity of the relay's instances."
  value       = google_service_account.relay.email
}
