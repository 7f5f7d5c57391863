# Direct VPC egress: the instances take addresses in this subnet and reach
# Memorystore's private address; everything else leaves the normal way.
resource "google_compute_subnetwork" "relay" {
  #checkov:skip=CKV_GCP_26:Flow logs are the network owner's choice and cost; turn them on on the network if wanted.
  #checkov:skip=CKV_GCP_76:The subnet holds Cloud Run instances only and needs no IPv6 private access.
  name                     = "${var.name}-egress"
  region                   = var.region
  network                  = var.network
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true
}
