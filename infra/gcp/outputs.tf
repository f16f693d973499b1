output "store_url" {
  description = "BRAINY_STORE for the CLI and the services."
  value       = local.store_url
}

output "service_urls" {
  description = "Cloud Run URL per role (call with an identity token: `gcloud auth print-identity-token`)."
  value       = { for k, s in google_cloud_run_v2_service.role : k => s.uri }
}

output "index_updated_topic" {
  description = "Pub/Sub topic for index-updated events."
  value       = google_pubsub_topic.index_updated.id
}
