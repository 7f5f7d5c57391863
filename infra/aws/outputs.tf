output "url" {
  description = "Base URL of the relay (WebSockets at wss://<host>/v1/ws); point a DNS name covered by the certificate at load_balancer_dns."
  value       = "https://${aws_lb.relay.dns_name}"
}

output "load_balancer_dns" {
  description = "DNS name of the load balancer."
  value       = aws_lb.relay.dns_name
}

output "cache_endpoint" {
  description = "Primary endpoint of the cache (TLS, AUTH)."
  value       = aws_elasticache_replication_group.relay.primary_endpoint_address
}

output "log_group" {
  description = "CloudWatch log group of the relay's JSON logs."
  value       = aws_cloudwatch_log_group.relay.name
}

output "service" {
  description = "ECS cluster/service of the relay."
  value       = "${aws_ecs_cluster.relay.name}/${aws_ecs_service.relay.name}"
}
