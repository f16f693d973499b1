# A Brainy deployment in one region: `make package`, then
#   terraform init && terraform apply -var bucket_name=my-brainy-bucket

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 6.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "bucket_name" {
  type = string
}

variable "package" {
  type    = string
  default = "../../../build/brainy-lambda.zip"
}

provider "aws" {
  region = var.region
}

module "brainy" {
  source      = "../"
  bucket_name = var.bucket_name
  package     = var.package
  environment = { BRAINY_CACHE_SIZE = "8GB" }
}

output "store_url" {
  value = module.brainy.store_url
}

output "function_urls" {
  value = module.brainy.function_urls
}
