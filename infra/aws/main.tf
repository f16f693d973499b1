# Brainy on AWS: one bucket, batch-created notifications -> SQS (+ dead-letter) ->
# indexer, ingest and search behind IAM-authenticated function URLs, the compactor
# on a schedule, and one role per function built from ../roles.json.

data "aws_region" "current" {}

locals {
  functions  = toset(["ingest", "search", "indexer", "compactor"])
  key_prefix = var.prefix == "" ? "" : "${var.prefix}/"
  store_url  = "s3://${aws_s3_bucket.this.bucket}${var.prefix == "" ? "" : "/${var.prefix}"}"
  # Brainy's own namespace in the bucket; the package sits beside its configuration.
  package_key = "${local.key_prefix}_brainy/deploy/brainy-lambda-${filesha256(var.package)}.zip"
}

# ------------------------------------------------------------------ bucket

resource "aws_s3_bucket" "this" {
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {
      prefix = local.key_prefix
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  # Lifecycle filters match a key's beginning, and segments sit under each
  # collection (`<collection>/segments/`): size picks them out instead. Manifests,
  # deletion files and hints are small and stay in Standard, where a read costs least.
  dynamic "rule" {
    for_each = var.segment_tiering_days == null ? [] : [var.segment_tiering_days]
    content {
      id     = "segments-to-intelligent-tiering"
      status = "Enabled"
      filter {
        and {
          prefix                   = local.key_prefix
          object_size_greater_than = 131072
        }
      }
      transition {
        days          = rule.value
        storage_class = "INTELLIGENT_TIERING"
      }
    }
  }
}

resource "aws_s3_object" "package" {
  bucket = aws_s3_bucket.this.id
  key    = local.package_key
  source = var.package
  etag   = filemd5(var.package)
  tags   = var.tags
}

# ----------------------------------------------- batch-created notifications

resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.name}-batches-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "batches" {
  name = "${var.name}-batches"
  # AWS's advice for a Lambda source: at least six times the function's timeout.
  visibility_timeout_seconds = 6 * var.timeout_seconds["indexer"]
  message_retention_seconds  = 1209600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

resource "aws_sqs_queue_policy" "batches" {
  queue_url = aws_sqs_queue.batches.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "BucketNotifications"
      Effect    = "Allow"
      Principal = { Service = "s3.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.batches.arn
      Condition = { ArnEquals = { "aws:SourceArn" = aws_s3_bucket.this.arn } }
    }]
  })
}

resource "aws_s3_bucket_notification" "batches" {
  bucket = aws_s3_bucket.this.id
  queue {
    id            = "brainy-batches"
    queue_arn     = aws_sqs_queue.batches.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = local.key_prefix
    filter_suffix = ".batch"
  }
  depends_on = [aws_sqs_queue_policy.batches]
}
