//! The Kubernetes front end: custom resource types, controllers and the status writer.

pub mod crd;
