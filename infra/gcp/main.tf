# Brainy on Google Cloud: one bucket; a Cloud Run service per role from one image;
# GCS object finalized -> Eventarc -> indexer; Cloud Scheduler -> compactor; a
# Pub/Sub topic for index-updated events; one service account per role.

locals {
  # The one role table (../roles.json) names the roles; tests/infra checks the
  # bucket bindings below against its read/write/delete columns.
  roles      = toset(keys(jsondecode(file("${path.module}/../roles.json")).roles))
  key_prefix = var.prefix == "" ? "" : "${var.prefix}/"
  store_url  = "gs://${google_storage_bucket.this.name}${var.prefix == "" ? "" : "/${var.prefix}"}"
  objects    = "projects/_/buckets/${google_storage_bucket.this.name}/objects/${local.key_prefix}"
}

resource "google_storage_bucket" "this" {
  project                     = var.project
  name                        = var.bucket_name
  location                    = var.region
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
}

# ------------------------------------------------------------ identities

resource "google_service_account" "role" {
  for_each     = local.roles
  project      = var.project
  account_id   = "${var.name}-${each.key}"
  display_name = "Brainy ${each.key}"
}

# GCS conditions match a name's beginning only, and a collection leads every key
# but Brainy's own (`_brainy/...`): per-collection patterns such as `*/wal/*` cannot
# be expressed, so the bindings are as narrow as whole roles allow.

# search: reads, never writes.
resource "google_storage_bucket_iam_member" "search_read" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.role["search"].member
}

# ingest: creates objects (never overwrites or deletes them: that needs
# storage.objects.delete), reads (config, and a keyed batch on a retried request),
# and deletes only its start-up probes.
resource "google_storage_bucket_iam_member" "ingest_create" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectCreator"
  member = google_service_account.role["ingest"].member
}

resource "google_storage_bucket_iam_member" "ingest_read" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.role["ingest"].member
}

resource "google_storage_bucket_iam_member" "ingest_probes" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectUser"
  member = google_service_account.role["ingest"].member
  condition {
    title      = "probes-only"
    expression = "resource.name.startsWith(\"${local.objects}_brainy/probes/\")"
  }
}

# indexer and compactor: read, write, overwrite (`_latest`, leases) and delete.
resource "google_storage_bucket_iam_member" "indexer_read_write" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectUser"
  member = google_service_account.role["indexer"].member
}

resource "google_storage_bucket_iam_member" "compactor_read_write" {
  bucket = google_storage_bucket.this.name
  role   = "roles/storage.objectUser"
  member = google_service_account.role["compactor"].member
}

resource "google_pubsub_topic" "index_updated" {
  project = var.project
  name    = "${var.name}-index-updated"
}

resource "google_pubsub_topic_iam_member" "index_updated" {
  for_each = toset(["indexer", "compactor"])
  project  = var.project
  topic    = google_pubsub_topic.index_updated.name
  role     = "roles/pubsub.publisher"
  member   = google_service_account.role[each.key].member
}

# -------------------------------------------------------------- services

resource "google_cloud_run_v2_service" "role" {
  for_each            = local.roles
  project             = var.project
  name                = "${var.name}-${each.key}"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account = google_service_account.role[each.key].email
    timeout         = "${var.timeout_seconds[each.key]}s"
    scaling {
      min_instance_count = var.min_instances[each.key]
      max_instance_count = var.max_instances[each.key]
    }
    containers {
      image = var.image
      resources {
        limits = {
          cpu    = var.cpu[each.key]
          memory = var.memory[each.key]
        }
      }
      dynamic "env" {
        for_each = merge(
          {
            BRAINY_ROLE      = each.key
            BRAINY_STORE     = local.store_url
            BRAINY_CACHE_DIR = "/tmp/brainy-cache"
          },
          var.environment,
        )
        content {
          name  = env.key
          value = env.value
        }
      }
      startup_probe {
        http_get {
          path = "/health"
        }
        period_seconds    = 5
        timeout_seconds   = 4
        failure_threshold = 24
      }
    }
  }
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = {
    for pair in setproduct(["ingest", "search"], var.invokers) : "${pair[0]} ${pair[1]}" => pair
  }
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.role[each.value[0]].name
  role     = "roles/run.invoker"
  member   = each.value[1]
}

# ------------------------------------------------ object finalized -> indexer

data "google_storage_project_service_account" "gcs" {
  project = var.project
}

resource "google_project_iam_member" "gcs_publishes_events" {
  project = var.project
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs.member
}

resource "google_service_account" "events" {
  project      = var.project
  account_id   = "${var.name}-events"
  display_name = "Brainy Eventarc and Scheduler"
}

resource "google_project_iam_member" "events_receive" {
  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.events.member
}

resource "google_cloud_run_v2_service_iam_member" "events_invoke" {
  for_each = toset(["indexer", "compactor"])
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.role[each.key].name
  role     = "roles/run.invoker"
  member   = google_service_account.events.member
}

# Eventarc cannot filter on a name's suffix: every object written wakes the indexer,
# which acknowledges what is not a batch in `<collection>/wal/`.
resource "google_eventarc_trigger" "batches" {
  project         = var.project
  name            = "${var.name}-batches"
  location        = var.region
  service_account = google_service_account.events.email
  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }
  matching_criteria {
    attribute = "bucket"
    value     = google_storage_bucket.this.name
  }
  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.role["indexer"].name
      region  = var.region
      path    = "/"
    }
  }
  depends_on = [google_project_iam_member.gcs_publishes_events, google_project_iam_member.events_receive]
}

resource "google_cloud_scheduler_job" "compactor" {
  project          = var.project
  region           = var.region
  name             = "${var.name}-compactor"
  schedule         = var.compactor_schedule
  attempt_deadline = "1800s"
  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.role["compactor"].uri}/compact"
    body        = base64encode("{}")
    headers     = { "Content-Type" = "application/json" }
    oidc_token {
      service_account_email = google_service_account.events.email
    }
  }
}
