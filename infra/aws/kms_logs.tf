data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# One key for the logs, the secrets and the cache at rest.
resource "aws_kms_key" "relay" {
  description         = "${var.name}: logs, secrets and cache at rest"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "relay" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.relay.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:The account root statement is the standard key-administration grant; narrower grants would lock the account out of its own key.
  #checkov:skip=CKV_AWS_111:Same root statement; a key policy's resource is always the key itself.
  #checkov:skip=CKV_AWS_356:In a key policy "*" means this key only.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsUse"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_cloudwatch_log_group" "relay" {
  #checkov:skip=CKV_AWS_338:Relay logs name users and rooms; 30 days (log_retention_days) serves operations without keeping personal data for a year. Raise it where an audit rule asks.
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.relay.arn
}
