//! A physical backup's database, restored: into `--target-dir` (`data_dir`: laid, set to
//! recover, ready to start) or in place of the server's data directory (`in_place`).

mod data_dir;
mod in_place;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::database::physical::{PhysicalInfo, RecoveryTarget};
use crate::database::postgres::Postgres;
use crate::error::{Error, Result};
use crate::manifest::Header;
use crate::repository::physical::check_present;
use crate::repository::OpContext;
use crate::synapse::Database;

use super::plan::Destination;
use data_dir::lay_data_dir;
use in_place::media_rows_without_files;
pub(crate) use in_place::wait_until_promoted;
pub(super) use in_place::InPlace;

/// What a physical backup's restore needs besides the files: its base and WAL range, where
/// recovery stops, and (in place) how PostgreSQL is stopped and started.
pub(super) type Prepared = (Option<Box<(PhysicalInfo, RecoveryTarget)>>, Option<InPlace>);

/// Before anything is touched: the recovery target (`--to-time` only for a physical backup),
/// the base and every WAL segment of the range present in the store, and in place the
/// `[postgres]` settings a restore needs.
pub(super) async fn prepare(
    config: &Config,
    ctx: &OpContext<'_>,
    id: &str,
    header: Option<&Header>,
    destination: &Destination,
    to_time: Option<DateTime<Utc>>,
) -> Result<Prepared> {
    let Some(physical) = header.and_then(|h| h.database.physical.clone()) else {
        return match to_time {
            Some(_) => Err(Error::config(format!(
                "--to-time needs a physical backup ([postgres] mode = \"physical\"); {id} holds no base backup"
            ))),
            None => Ok((None, None)),
        };
    };
    let target = match to_time {
        Some(at) => RecoveryTarget::Time(at),
        None => RecoveryTarget::RestorePoint(physical.restore_point.clone()),
    };
    check_present(ctx, id, &physical).await?;
    let in_place = match destination {
        Destination::Live(_) => Some(InPlace::check(config, id)?),
        Destination::Directory(_) => None,
    };
    Ok((Some(Box::new((physical, target))), in_place))
}

/// Refuses unless the filesystem the base is laid on (beside the data directory it replaces,
/// which is kept, or in the folder) holds it, plus the `staged` bytes of the files when they
/// share it.
pub(super) fn check_room(
    physical: &PhysicalInfo,
    in_place: Option<&InPlace>,
    destination: &Destination,
    plan: &super::plan::Plan,
    staged: u64,
) -> Result<()> {
    let laid_in = match (in_place, destination) {
        (Some(in_place), _) => in_place.data_dir(),
        (None, Destination::Directory(dir)) => dir.as_path(),
        (None, Destination::Live(_)) => return Ok(()),
    };
    let shared = super::preflight::same_filesystem(laid_in, plan.live_paths());
    let needed = physical.base_object_bytes + if shared { staged } else { 0 };
    super::preflight::check_free_space([laid_in], needed)
}

/// After the files are in place: `--target-dir` gets its `postgres` folder; in place,
/// `--to-time` reports the media rows whose file the restored backup lacks.
pub(super) async fn after(
    config: &Config,
    ctx: &OpContext<'_>,
    physical: &(PhysicalInfo, RecoveryTarget),
    destination: &Destination,
    to_time: Option<DateTime<Utc>>,
) -> Result<Vec<String>> {
    let (info, target) = physical;
    match destination {
        Destination::Directory(dir) => lay_data_dir(config, ctx, info, target, dir).await,
        Destination::Live(hs) => match (&hs.database, to_time) {
            (Database::Postgres(args), Some(_)) => Ok(vec![
                media_rows_without_files(&Postgres::new(args), &hs.media_store).await,
            ]),
            _ => Ok(Vec::new()),
        },
    }
}
