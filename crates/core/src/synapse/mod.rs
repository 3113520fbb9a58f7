//! What the tool learns from Synapse's own `homeserver.yaml`: where the signing key, database,
//! media store and referenced config files live, how the media store is laid out, and how to
//! tell whether Synapse is running, and which media storage providers hold media besides it.

mod config_files;
mod homeserver;
pub mod launch;
pub mod media;
mod providers;
mod running;

pub use config_files::{find_config_files, MergedConfig};
pub use homeserver::{Database, HomeserverConfig, Listener, PostgresArgs, WorkingDir};
pub use providers::{MediaProvider, ProviderKind, S3Provider, S3_MODULE};
pub use running::{
    check_working_dir, is_running, published_keys, server_version, wait_for_health, RunningState,
};
