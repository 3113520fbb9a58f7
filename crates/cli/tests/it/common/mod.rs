//! Shared fixtures for the integration tests: generated Synapse data dirs, configs, running the
//! real binary, the real `gpg` and `tar`, and the loopback S3 server started by the test scripts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub mod pg_cluster;
mod raw_store;
pub use raw_store::{Backend, RawStore};

pub const PASSPHRASE: &str = "correct horse battery staple";
pub const SERVER_NAME: &str = "example.test";

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_synapse-backup"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// A scratch world: a data dir, a passphrase file, a config, a store.
pub struct World {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub passphrase_file: PathBuf,
    pub store: PathBuf,
}

pub struct WorldOptions<'a> {
    pub server_name: &'a str,
    pub size_mib: f64,
    pub seed: u32,
    /// Extra TOML appended to the config (e.g. a [restore] section).
    pub extra_config: &'a str,
    /// `None`: a local store in the world; `Some`: an [s3] section.
    pub s3: Option<S3Env>,
}

impl Default for WorldOptions<'_> {
    fn default() -> Self {
        WorldOptions {
            server_name: SERVER_NAME,
            size_mib: 2.0,
            seed: 1,
            extra_config: "",
            s3: None,
        }
    }
}

impl World {
    pub fn new() -> World {
        World::with(WorldOptions::default())
    }

    pub fn with(options: WorldOptions<'_>) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        make_datadir(&data, options.server_name, options.size_mib, options.seed);
        let passphrase_file = dir.path().join("passphrase");
        fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
        fs::set_permissions(&passphrase_file, fs::Permissions::from_mode(0o600)).unwrap();
        let store = dir.path().join("store");
        let store_section = match &options.s3 {
            None => format!("[local]\npath = \"{}\"\n", store.display()),
            Some(s3) => s3.config_section(&dir.path().join("s3-secret"), &unique_prefix("w")),
        };
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                "[synapse]\nconfig = \"{}\"\n{store_section}[backup]\npassphrase-file = \"{}\"\n{}",
                data.join("homeserver.yaml").display(),
                passphrase_file.display(),
                options.extra_config
            ),
        )
        .unwrap();
        World {
            dir,
            data,
            config,
            passphrase_file,
            store,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_with_config(&self.config, args)
    }

    /// Runs create-backup and returns the new id.
    pub fn create_backup(&self) -> String {
        let out = self.run(&["create-backup"]);
        assert_success(&out, "create-backup");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(id.starts_with("backup-"), "unexpected id {id:?}");
        id
    }

    /// Restores backup `id` into a new `drill` directory of the world and returns it.
    pub fn restore_drill(&self, id: &str, what: &str) -> PathBuf {
        let drill = self.path("drill");
        let out = self.run(&[
            "restore-backup",
            id,
            "--target-dir",
            drill.to_str().unwrap(),
        ]);
        assert_success(&out, what);
        drill
    }

    /// The object file of a backup in the local store.
    pub fn object(&self, id: &str) -> PathBuf {
        self.store.join(id)
    }

    /// The restore journal of the world's data dir.
    pub fn journal(&self) -> PathBuf {
        self.data.join(RESTORE_JOURNAL)
    }

    /// Adds a new media file (a fresh upload) to the data dir, its bytes a pattern of `seed`.
    pub fn upload_media(&self, name: &str, bytes: usize, seed: u8) -> PathBuf {
        let path = self
            .data
            .join("media_store/local_content/zz")
            .join(&name[..2])
            .join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let data: Vec<u8> = (0..bytes)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        fs::write(&path, data).unwrap();
        path
    }

    pub fn set_passphrase(&self, passphrase: &str) {
        fs::write(&self.passphrase_file, format!("{passphrase}\n")).unwrap();
    }
}

/// A world whose store is on `backend`, with the S3 settings it uses; `None` (a skip) when
/// Garage is asked for and not running.
pub fn world_on(backend: Backend) -> Option<(World, Option<S3Env>)> {
    let s3 = match backend {
        Backend::Local => None,
        Backend::Garage => Some(S3Env::from_env()?),
    };
    let world = World::with(WorldOptions {
        s3: s3.clone(),
        ..Default::default()
    });
    Some((world, s3))
}

pub fn run_with_config(config: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run synapse-backup")
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `out` failed with exit code `code` and that its stderr mentions every one of
/// `needles` (ignoring case); returns stderr. The one check of a failure or refusal.
#[track_caller]
/// `code` is one of the CLI's own constants, `crate::exit::*`.
pub fn assert_fails(out: &Output, code: u8, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(i32::from(code)),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in needles {
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}:\n{stderr}"
        );
    }
    stderr
}

pub fn make_datadir(data: &Path, server_name: &str, size_mib: f64, seed: u32) {
    let status = Command::new("python3")
        .arg(repo_root().join("scripts/example-datadir.py"))
        .arg(data)
        .args(["--server-name", server_name])
        .args(["--size-mib", &size_mib.to_string()])
        .args(["--seed", &seed.to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("python3 scripts/example-datadir.py");
    assert!(status.success(), "example-datadir.py failed");
}

/// Relative path → SHA-256 of every file under `root` (directories omitted).
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.expect("walk");
        let rel = || {
            entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string()
        };
        if entry.file_type().is_file() {
            out.insert(rel(), sha256_hex(&fs::read(entry.path()).unwrap()));
        } else if entry.file_type().is_symlink() {
            out.insert(rel(), "symlink".into());
        }
    }
    out
}

pub fn file_hash(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Asserts that no one of `needles` appears, byte for byte, in a stored `object`.
#[track_caller]
pub fn assert_no_plaintext(object: &[u8], needles: &[&[u8]]) {
    for needle in needles {
        assert!(
            !object.windows(needle.len()).any(|w| w == *needle),
            "plaintext {:?} found in the object",
            String::from_utf8_lossy(needle)
        );
    }
}

/// Encrypts `plain` with the real gpg, as the charm's pipeline does.
pub fn gpg_encrypt(plain: &[u8], passphrase_file: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "--no-symkey-cache",
        "--passphrase-file",
        passphrase_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--symmetric", "--output", "-"]);
    run_gpg(&gnupg_home(), &args, plain)
}

/// Runs the real gpg with `args` in `home`, `input` on stdin; returns stdout.
pub fn run_gpg(home: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gpg")
        .args(["--batch", "--quiet", "--yes"])
        .args(args)
        .env("GNUPGHOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gpg");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decrypts `object` with the real gpg.
pub fn gpg_decrypt(object: &Path, passphrase_file: &Path) -> Output {
    Command::new("gpg")
        .args(["--batch", "--quiet", "--passphrase-file"])
        .arg(passphrase_file)
        .args(["--decrypt"])
        .arg(object)
        .env("GNUPGHOME", gnupg_home())
        .output()
        .expect("gpg")
}

/// A private GNUPGHOME so tests never touch the user's keyrings or agent cache.
pub fn gnupg_home() -> PathBuf {
    let home = std::env::temp_dir().join("synapse-backup-tests-gnupg");
    fs::create_dir_all(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    home
}

/// `tar -c -C root members...` with the real tar.
pub fn real_tar(root: &Path, members: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-c")
        .arg("-C")
        .arg(root)
        .args(members)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Connection facts of the loopback S3 server started by `scripts/s3-test-server.sh`.
#[derive(Clone, Debug)]
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Env {
    /// Reads `S3_TEST_*`. Without them the S3 tests are skipped, unless
    /// `SYNAPSE_BACKUP_REQUIRE_S3=1` (as in CI), where a missing server is a failure.
    pub fn from_env() -> Option<S3Env> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let env = (|| {
            Some(S3Env {
                endpoint: get("S3_TEST_ENDPOINT")?,
                region: get("S3_TEST_REGION").unwrap_or_else(|| "garage".into()),
                bucket: get("S3_TEST_BUCKET")?,
                access_key: get("S3_TEST_ACCESS_KEY")?,
                secret_key: get("S3_TEST_SECRET_KEY")?,
            })
        })();
        if env.is_none() && std::env::var("SYNAPSE_BACKUP_REQUIRE_S3").as_deref() == Ok("1") {
            panic!("SYNAPSE_BACKUP_REQUIRE_S3=1 but S3_TEST_* are not set: start scripts/s3-test-server.sh");
        }
        if env.is_none() {
            eprintln!("S3_TEST_* not set: skipping an S3 test (run it through scripts/test.sh)");
        }
        env
    }

    /// A client of the test bucket, to look behind the tool's back.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .build()
            .unwrap()
    }

    /// The prefix (`[s3] path`) a world's config gives its backups in the bucket.
    pub fn prefix_of(world: &World) -> String {
        fs::read_to_string(&world.config)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("path = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap()
            .to_string()
    }

    /// An [s3] section; the secret goes to `secret_file` (mode 600), with `prefix` as path.
    pub fn config_section(&self, secret_file: &Path, prefix: &str) -> String {
        fs::write(secret_file, &self.secret_key).unwrap();
        fs::set_permissions(secret_file, fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "[s3]\nendpoint = \"{}\"\nbucket = \"{}\"\npath = \"{}\"\nregion = \"{}\"\ns3-uri-style = \"path\"\naccess-key = \"{}\"\nsecret-key-file = \"{}\"\nmax-retries = 2\n",
            self.endpoint,
            self.bucket,
            prefix,
            self.region,
            self.access_key,
            secret_file.display()
        )
    }
}

/// The loopback S3 server is shared by every S3 test of this binary. The fault tests stop and
/// restart it and read the bucket's count of unfinished multipart uploads, so each of them has it
/// to itself ([`s3_exclusive`]); every other test that may use it holds [`s3_shared`] meanwhile.
static S3_SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Uses the S3 server alongside the other tests that share it; held until dropped.
pub fn s3_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    S3_SERVER
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Has the S3 server to itself (no other S3 test runs); held until dropped.
pub fn s3_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    S3_SERVER
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A unique prefix so tests sharing one bucket never see each other's backups.
pub fn unique_prefix(name: &str) -> String {
    format!(
        "test-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The files of a live data dir, without the tool's own lock file.
pub fn live_state(data: &Path) -> BTreeMap<String, String> {
    let mut state = tree_hashes(data);
    state.retain(|name, _| !name.starts_with(".synapse-backup"));
    state
}

/// Compares two trees and names the first paths that differ.
pub fn assert_same_tree(
    actual: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
    what: &str,
) {
    let differing: Vec<&String> = actual
        .keys()
        .chain(expected.keys())
        .filter(|k| actual.get(*k) != expected.get(*k))
        .take(10)
        .collect();
    assert!(differing.is_empty(), "{what}: differs at {differing:?}");
}

/// Reads the command line of every process on the machine, over and over, while a test runs:
/// what a secret passed as an argument would expose to every local user through `ps`.
pub struct CommandLineWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeSet<String>>,
}

impl CommandLineWatch {
    pub fn start() -> CommandLineWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in fs::read_dir("/proc").unwrap().flatten() {
                    let name = entry.file_name();
                    if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    // Processes come and go; one that ended meanwhile has nothing to read.
                    if let Ok(raw) = fs::read(entry.path().join("cmdline")) {
                        if !raw.is_empty() {
                            seen.insert(String::from_utf8_lossy(&raw).replace('\0', " "));
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            seen
        });
        CommandLineWatch { stop, thread }
    }

    /// Every distinct command line seen.
    pub fn finish(self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Starts the binary on the world's config with `args` and extra environment, output captured.
pub fn spawn(world: &World, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut command = Command::new(binary());
    command.arg("--config").arg(&world.config).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends signal `name` (`INT`, `TERM`, `KILL`) to `child`.
pub fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A helper process (a proxy) that is killed when the test ends, however it ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The restore journal's name: in the data dir, or next to a --target-dir.
pub const RESTORE_JOURNAL: &str = ".synapse-backup-restore.json";

/// The names in folder `dir`.
pub fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .collect()
}

/// The names in a data dir and in its media_store: where a restore stages, and moves aside.
pub fn names_beside_live_data(data: &Path) -> Vec<String> {
    let mut names = names_in(data);
    names.extend(names_in(&data.join("media_store")));
    names
}

/// Staging folders a restore left next to the live data.
pub fn staging_left(data: &Path) -> Vec<String> {
    names_beside_live_data(data)
        .into_iter()
        .filter(|name| name.contains(".staging-"))
        .collect()
}

/// Asserts that no restore left its staging or its journal in the world's data dir.
#[track_caller]
pub fn assert_no_staging_left(world: &World) {
    let left = staging_left(&world.data);
    assert!(left.is_empty(), "staging left behind: {left:?}");
    assert!(!world.journal().exists(), "journal left behind");
}

/// Asserts that `list-backups` shows nothing.
pub fn assert_no_backups(world: &World) {
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&listed.stdout).unwrap()["backups"],
        serde_json::json!([]),
        "a backup is listed"
    );
}

/// The names at the top of a local store that are not its folders (media volumes, indexes,
/// markers): the backups, and anything else a user put there.
pub fn backups_in_store(world: &World) -> Vec<String> {
    let mut names: Vec<String> = names_in(&world.store)
        .into_iter()
        .filter(|name| name.starts_with("backup-"))
        .collect();
    names.sort();
    names
}

/// Copies backup `id` from one world's local store to another's, with the media volumes and
/// indexes it may need (all of them: simple, and a superset is harmless).
pub fn copy_backup(from: &World, to: &World, id: &str) {
    fs::create_dir_all(&to.store).unwrap();
    fs::copy(from.object(id), to.object(id)).unwrap();
    for folder in ["volumes", "index"] {
        let source = from.store.join(folder);
        if !source.exists() {
            continue;
        }
        fs::create_dir_all(to.store.join(folder)).unwrap();
        for name in names_in(&source) {
            fs::copy(source.join(&name), to.store.join(folder).join(&name)).unwrap();
        }
    }
}

/// Stores a copy of backup `id`'s base under `new_id` in the world's local store, renamed
/// inside as well (its header and file list name `new_id`), re-encrypted with the real gpg and
/// the world's passphrase: an older backup as the tool would have written it. (A copy renamed
/// outside only is a rollback, which the tool refuses.)
pub fn store_renamed_copy(world: &World, id: &str, new_id: &str) {
    let out = gpg_decrypt(&world.object(id), &world.passphrase_file);
    assert!(out.status.success(), "gpg -d {id}");
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut builder = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path == "manifest.json" || path == "manifest-files.json" {
            let mut value: serde_json::Value = serde_json::from_slice(&data).unwrap();
            value["backup_id"] = serde_json::json!(new_id);
            data = serde_json::to_vec(&value).unwrap();
        }
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, &path, &data[..]).unwrap();
    }
    let plain = builder.into_inner().unwrap();
    fs::write(
        world.object(new_id),
        gpg_encrypt(&plain, &world.passphrase_file, &[]),
    )
    .unwrap();
}

/// docs/format.md's loop restoring the media of a format-3 backup by hand, run in the folder
/// where its base was unpacked, with `$store` and a `gpg` function set: the runs merged with
/// awk (the newest line of a path wins, `gone` drops it), then each volume's files by `tar -T`.
pub const BY_HAND_LOOP: &str = r#"while read -r run; do gpg -d "$store/$run" | tar -xO; done < volumes/runs.list \
    | awk -F'\t' '!/^#/ { last[$1] = $2 } END { for (p in last) if (last[p] != "gone") print last[p] "\t" p }' \
    > effective.tsv
cut -f1 effective.tsv | sort -u | while read -r volume; do
    awk -F'\t' -v v="$volume" '$1 == v { print $2 }' effective.tsv > list
    gpg -d "$store/$volume" | tar -x -T list
done
"#;

/// Restores the media of a backup by hand into `dir`, as docs/format.md says, with the real gpg,
/// tar and awk: `first` (run first, e.g. unpacking the base) then [`BY_HAND_LOOP`].
pub fn restore_by_hand(world: &World, dir: &Path, first: &str) {
    let script = format!(
        "set -euo pipefail\nstore={store}\ngpg() {{ command gpg --batch --quiet --passphrase-file {pass} \"$@\"; }}\n{first}\n{BY_HAND_LOOP}",
        store = world.store.display(),
        pass = world.passphrase_file.display(),
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("GNUPGHOME", gnupg_home())
        .output()
        .unwrap();
    assert_success(&out, "the restore by hand");
}
