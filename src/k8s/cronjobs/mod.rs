//! Watching CronJobs: their Jobs and Pods as evidence for the Heartbeats that name them
//! (`cronJobRef`), and Heartbeats made from one annotation on a CronJob.

pub mod annotated;
pub mod annotations;
pub mod evidence;
pub mod view;
pub mod watch;
