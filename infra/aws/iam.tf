# One role per function, least privilege by key pattern: the statements come from
# ../roles.json, the one table of which keys each role may read, write and delete.

locals {
  role_table = jsondecode(file("${path.module}/../roles.json"))
  s3_actions = {
    read = ["s3:GetObject"]
    # A large segment goes up in parts; abandoning one must be allowed too.
    write  = ["s3:PutObject", "s3:AbortMultipartUpload"]
    delete = ["s3:DeleteObject"]
  }
  bucket_policies = {
    for role in local.functions : role => jsonencode({
      Version = "2012-10-17"
      Statement = concat(
        # Without ListBucket, S3 answers a GET of a missing key 403, not 404, and
        # the commit protocol reads absent keys on purpose (probing for the next
        # manifest version, per-instance overrides).
        [{
          Sid      = "List"
          Effect   = "Allow"
          Action   = ["s3:ListBucket"]
          Resource = [aws_s3_bucket.this.arn]
        }],
        [
          for op in ["read", "write", "delete"] : {
            Sid    = title(op)
            Effect = "Allow"
            Action = local.s3_actions[op]
            Resource = [
              for p in local.role_table.roles[role][op] :
              "${aws_s3_bucket.this.arn}/${local.key_prefix}${local.role_table.prefixes[p]}"
            ]
          } if length(local.role_table.roles[role][op]) > 0
        ],
        var.kms_key_arn == null ? [] : [{
          Sid      = "Kms"
          Effect   = "Allow"
          Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
          Resource = [var.kms_key_arn]
        }],
      )
    })
  }
}

resource "aws_iam_role" "function" {
  for_each = local.functions
  name     = "${var.name}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "bucket"
  role     = aws_iam_role.function[each.key].id
  policy   = local.bucket_policies[each.key]
}

resource "aws_iam_role_policy" "logs" {
  for_each = local.functions
  name     = "logs"
  role     = aws_iam_role.function[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
      Resource = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
    }]
  })
}

resource "aws_iam_role_policy" "queue" {
  name = "queue"
  role = aws_iam_role.function["indexer"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
      Resource = [aws_sqs_queue.batches.arn]
    }]
  })
}
