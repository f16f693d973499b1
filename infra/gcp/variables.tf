variable "project" {
  description = "The Google Cloud project."
  type        = string
}

variable "region" {
  description = "Region of the bucket, the services, the trigger and the schedule."
  type        = string
  default     = "us-central1"
}

variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "brainy"
}

variable "bucket_name" {
  description = "The bucket Brainy keeps everything in (created by this module)."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the store inside the bucket ('' for the whole bucket)."
  type        = string
  default     = ""
}

variable "image" {
  description = "The container image built from the repository's Dockerfile (one image, every role)."
  type        = string
}

variable "cpu" {
  description = "CPU limit per role."
  type        = map(string)
  default     = { ingest = "1", search = "4", indexer = "2", compactor = "4" }
}

variable "memory" {
  description = "Memory limit per role."
  type        = map(string)
  default     = { ingest = "1Gi", search = "16Gi", indexer = "4Gi", compactor = "8Gi" }
}

variable "min_instances" {
  description = "Instances kept warm per role."
  type        = map(number)
  default     = { ingest = 0, search = 1, indexer = 0, compactor = 0 }
}

variable "max_instances" {
  description = "Most instances per role."
  type        = map(number)
  default     = { ingest = 20, search = 20, indexer = 10, compactor = 1 }
}

variable "timeout_seconds" {
  description = "Request timeout per role."
  type        = map(number)
  default     = { ingest = 60, search = 60, indexer = 600, compactor = 1800 }
}

variable "environment" {
  description = "Extra BRAINY_* settings for every service."
  type        = map(string)
  default     = {}
}

variable "invokers" {
  description = "Members allowed to call ingest and search (e.g. \"serviceAccount:app@p.iam.gserviceaccount.com\")."
  type        = list(string)
  default     = []
}

variable "compactor_schedule" {
  description = "Cloud Scheduler cron of the compactor."
  type        = string
  default     = "*/15 * * * *"
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects: for test stacks only."
  type        = bool
  default     = false
}
