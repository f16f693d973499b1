# One deployment package for the four functions: the dependencies, the `brainy`
# layer and functions/ in one zip (`make package`). A Lambda layer would count
# against the same 250 MB unzipped limit, start no faster, and let the layer and
# the functions drift apart in version; one package is uploaded once and each
# function picks its handler.

resource "aws_cloudwatch_log_group" "function" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "function" {
  for_each         = local.functions
  function_name    = "${var.name}-${each.key}"
  role             = aws_iam_role.function[each.key].arn
  runtime          = "python3.11"
  architectures    = ["x86_64"]
  handler          = "brainy.entry.aws_lambda.${each.key}"
  s3_bucket        = aws_s3_object.package.bucket
  s3_key           = aws_s3_object.package.key
  source_code_hash = filebase64sha256(var.package)
  memory_size      = var.memory_mb[each.key]
  timeout          = var.timeout_seconds[each.key]
  # -1 leaves the function in the account's unreserved pool.
  reserved_concurrent_executions = var.reserved_concurrency[each.key]
  ephemeral_storage {
    size = each.key == "search" ? var.search_ephemeral_storage_mb : 512
  }
  environment {
    variables = merge(
      {
        BRAINY_STORE     = local.store_url
        BRAINY_S3_REGION = data.aws_region.current.name
        # Lambda's only writable folder.
        BRAINY_CACHE_DIR = "/tmp/brainy-cache"
      },
      var.environment,
    )
  }
  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.function, aws_iam_role_policy.function]
}

resource "aws_lambda_function_url" "http" {
  for_each           = toset(["ingest", "search"])
  function_name      = aws_lambda_function.function[each.key].function_name
  authorization_type = "AWS_IAM"
}

resource "aws_lambda_event_source_mapping" "batches" {
  event_source_arn                   = aws_sqs_queue.batches.arn
  function_name                      = aws_lambda_function.function["indexer"].arn
  batch_size                         = var.indexer_batch_size
  maximum_batching_window_in_seconds = 1
  # The adapter answers batchItemFailures: only the failed messages come back.
  function_response_types = ["ReportBatchItemFailures"]
}

resource "aws_cloudwatch_event_rule" "compactor" {
  name                = "${var.name}-compactor"
  description         = "Brainy maintenance: sweep, compact, collect garbage, verify."
  schedule_expression = var.compactor_schedule
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "compactor" {
  rule = aws_cloudwatch_event_rule.compactor.name
  arn  = aws_lambda_function.function["compactor"].arn
}

resource "aws_lambda_permission" "compactor_schedule" {
  statement_id  = "AllowSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.function["compactor"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.compactor.arn
}
