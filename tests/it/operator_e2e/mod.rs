//! The operator end to end against a real API server (the control plane of
//! `tests/cluster/cluster.sh`, or kind: `KUBECONFIG` decides), run as the Helm chart's
//! ServiceAccount with the chart's rendered RBAC. Run by `tests/run-all.sh`, which brings
//! the cluster up; without a cluster these tests fail rather than pass.

mod channels;
mod cronjobs;
mod draining;
mod failover;
mod flows;
mod harness;
mod quiet;
mod refusals;
mod restarts;
mod secrets;
mod status;
mod trust;
