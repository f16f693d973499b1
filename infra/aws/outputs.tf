output "bucket" {
  description = "The bucket's name."
  value       = aws_s3_bucket.this.bucket
}

output "store_url" {
  description = "BRAINY_STORE for the CLI and the functions."
  value       = local.store_url
}

output "function_names" {
  description = "Lambda function name per role."
  value       = { for k, f in aws_lambda_function.function : k => f.function_name }
}

output "function_urls" {
  description = "IAM-authenticated URLs of ingest and search (sign requests with SigV4, service `lambda`)."
  value       = { for k, u in aws_lambda_function_url.http : k => u.function_url }
}

output "queue_url" {
  description = "The batch-created queue."
  value       = aws_sqs_queue.batches.id
}

output "dead_letter_queue_url" {
  description = "Messages the indexer failed on max_receive_count times."
  value       = aws_sqs_queue.dead_letters.id
}

output "role_arns" {
  description = "IAM role per function."
  value       = { for k, r in aws_iam_role.function : k => r.arn }
}

output "bucket_policies" {
  description = "The bucket policy document of each role, as rendered (JSON)."
  value       = local.bucket_policies
}
