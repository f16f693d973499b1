variable "name" {
  description = "Prefix of every resource's name (functions, roles, queues, log groups)."
  type        = string
  default     = "brainy"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2 to 31 lower-case letters, digits and '-', starting with a letter."
  }
}

variable "bucket_name" {
  description = "The bucket Brainy keeps everything in (created by this module)."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the store inside the bucket ('' for the whole bucket); the store URL is s3://<bucket>/<prefix>."
  type        = string
  default     = ""
  validation {
    condition     = !startswith(var.prefix, "/") && !endswith(var.prefix, "/")
    error_message = "prefix: no leading or trailing '/' (e.g. \"brainy\", or \"\")."
  }
}

variable "package" {
  description = "Path of the Lambda deployment package `make package` builds (build/brainy-lambda.zip)."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects (every collection): for test stacks only."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "A KMS key for the bucket's default encryption (SSE-KMS); null: SSE-S3 (AES-256)."
  type        = string
  default     = null
}

variable "segment_tiering_days" {
  description = "Move objects above 128 KiB (segments; batches are deleted sooner) to S3 Intelligent-Tiering after this many days; null: no tiering."
  type        = number
  default     = null
}

variable "memory_mb" {
  description = "Lambda memory (MB) per function; CPU scales with it."
  type        = map(number)
  default     = { ingest = 512, search = 3008, indexer = 2048, compactor = 3008 }
}

variable "timeout_seconds" {
  description = "Lambda timeout (seconds) per function."
  type        = map(number)
  default     = { ingest = 30, search = 30, indexer = 300, compactor = 900 }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions per function; -1: unreserved (the account's pool)."
  type        = map(number)
  default     = { ingest = -1, search = -1, indexer = 10, compactor = 1 }
}

variable "search_ephemeral_storage_mb" {
  description = "/tmp of the search function (MB): the segment cache lives there, so keep `cache_size` below it."
  type        = number
  default     = 10240
}

variable "environment" {
  description = "Extra BRAINY_* settings for every function (e.g. { BRAINY_CACHE_SIZE = \"8GB\" })."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "Retention of each function's CloudWatch log group."
  type        = number
  default     = 14
}

variable "compactor_schedule" {
  description = "EventBridge schedule expression of the compactor."
  type        = string
  default     = "rate(15 minutes)"
}

variable "indexer_batch_size" {
  description = "SQS messages per indexer invocation."
  type        = number
  default     = 10
}

variable "max_receive_count" {
  description = "Deliveries of a batch-created message before it moves to the dead-letter queue."
  type        = number
  default     = 5
}

variable "tags" {
  description = "Tags on every resource that takes them."
  type        = map(string)
  default     = {}
}
