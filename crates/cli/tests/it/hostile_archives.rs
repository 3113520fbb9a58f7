//! Hostile archives, encrypted with the right passphrase so that only the tar layer and the
//! manifest checks stand between them and the disk: path escapes, absolute paths, links, device
//! nodes, set-id modes, archives that disagree with their manifest, and objects that are not
//! passphrase-encrypted at all.
//!
//! Every refusal must exit with the documented code, name the offending member, leave the live
//! data dir as it was, remove its staging, and write nothing anywhere else.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use crate::exit;
use serde_json::{json, Value};
use tar::{EntryType, Header};

/// The id hand-made archives are stored under (one world per test).
const ID: &str = "backup-20260101120000000000";
/// 2026-01-01T12:00:00Z, the mtime of every hand-made member.
const MTIME: u64 = 1_767_268_800;

// ---------------------------------------------------------------------------------------------
// Hand-made tar archives
// ---------------------------------------------------------------------------------------------

/// One member of a hand-made tar. The name and link target are copied into the header byte for
/// byte, so nothing (not even the tar crate's own path checks) cleans them up.
#[derive(Clone)]
struct Member {
    name: String,
    kind: EntryType,
    mode: u32,
    data: Vec<u8>,
    link: Option<String>,
    device: Option<(u32, u32)>,
}

impl Member {
    fn raw(name: &str, kind: EntryType, data: &[u8]) -> Member {
        Member {
            name: name.to_string(),
            kind,
            mode: 0o644,
            data: data.to_vec(),
            link: None,
            device: None,
        }
    }

    fn file(name: &str, data: &[u8]) -> Member {
        Member::raw(name, EntryType::Regular, data)
    }

    fn with_mode(mut self, mode: u32) -> Member {
        self.mode = mode;
        self
    }

    fn symlink(name: &str, target: &str) -> Member {
        Member {
            link: Some(target.to_string()),
            ..Member::raw(name, EntryType::Symlink, b"")
        }
    }

    fn hard_link(name: &str, target: &str) -> Member {
        Member {
            link: Some(target.to_string()),
            ..Member::raw(name, EntryType::Link, b"")
        }
    }

    fn device(name: &str, kind: EntryType, major: u32, minor: u32) -> Member {
        Member {
            device: Some((major, minor)),
            ..Member::raw(name, kind, b"")
        }
    }
}

/// Writes `members` into a tar with plain GNU headers (names under 100 bytes).
fn tar_with(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = Header::new_gnu();
        let name = member.name.as_bytes();
        assert!(
            name.len() < 100,
            "{:?} needs a long-name header",
            member.name
        );
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(member.kind);
        header.set_mode(member.mode);
        header.set_size(member.data.len() as u64);
        header.set_mtime(MTIME);
        if let Some(link) = &member.link {
            header.set_link_name_literal(link).unwrap();
        }
        if let Some((major, minor)) = member.device {
            header.set_device_major(major).unwrap();
            header.set_device_minor(minor).unwrap();
        }
        header.set_cksum();
        builder.append(&header, &member.data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

/// One PAX extended-header record, `"<len> key=value\n"`, where `len` counts itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len();
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}").into_bytes()
}

fn signing_key() -> Member {
    Member::file(
        &format!("keys/{SERVER_NAME}.signing.key"),
        b"ed25519 a_test c29tZSBzaWduaW5nIGtleSBieXRlcyBmb3IgdGVzdHM\n",
    )
    .with_mode(0o600)
}

fn role_of(path: &str) -> &'static str {
    match path.split('/').next() {
        Some("keys") => "signing-key",
        Some("database") => "database",
        Some("config") => "config",
        _ => "media",
    }
}

/// A backup of `SERVER_NAME` laid out as synapse-backup writes it, around `members`:
/// `manifest.json` first, the signing key, `members`, and last a file list naming every regular
/// member with its true size and SHA-256, so that nothing but `members` themselves is wrong.
fn backup_tar(id: &str, members: &[Member]) -> Vec<u8> {
    let mut all = vec![signing_key()];
    all.extend_from_slice(members);
    let regular: Vec<&Member> = all
        .iter()
        .filter(|m| m.kind == EntryType::Regular)
        .collect();
    let files: Vec<Value> = regular
        .iter()
        .map(|m| {
            json!({
                "role": role_of(&m.name),
                "path": m.name,
                "size": m.data.len(),
                "mode": m.mode,
                "mtime": MTIME,
                "sha256": sha256_hex(&m.data),
            })
        })
        .collect();
    let header = json!({
        "format_version": 1,
        "tool": "synapse-backup",
        "tool_version": "0.1.0",
        "backup_id": id,
        "server_name": SERVER_NAME,
        "created": "2026-01-01T12:00:00Z",
        "database": {"kind": "sqlite", "included": true},
        "include_remote_media": false,
        "expected_bytes": regular.iter().map(|m| m.data.len()).sum::<usize>(),
        "files_member": "manifest-files.json",
    });
    let list = json!({"format_version": 1, "backup_id": id, "files": files});
    let mut out = vec![Member::file(
        "manifest.json",
        &serde_json::to_vec(&header).unwrap(),
    )];
    out.extend(all);
    out.push(Member::file(
        "manifest-files.json",
        &serde_json::to_vec(&list).unwrap(),
    ));
    tar_with(&out)
}

// ---------------------------------------------------------------------------------------------
// Storing objects
// ---------------------------------------------------------------------------------------------

fn store_object(world: &World, id: &str, object: &[u8]) {
    fs::create_dir_all(&world.store).unwrap();
    fs::write(world.object(id), object).unwrap();
}

/// Encrypts `tar_bytes` with the real gpg and the world's (right) passphrase, and stores it.
fn store_encrypted(world: &World, id: &str, tar_bytes: &[u8]) {
    store_object(
        world,
        id,
        &gpg_encrypt(tar_bytes, &world.passphrase_file, &[]),
    );
}

// ---------------------------------------------------------------------------------------------
// What must hold after a refusal
// ---------------------------------------------------------------------------------------------

/// After a refused live restore: no staging and no journal, nothing moved aside, no restored
/// configuration written.
#[track_caller]
fn assert_refused_restore_left_nothing(world: &World) {
    assert_no_staging_left(world);
    for name in names_beside_live_data(&world.data) {
        assert!(
            !name.contains(".pre-restore-"),
            "a failed restore moved {name} aside"
        );
        assert!(
            !name.starts_with("restored-config-"),
            "a failed restore left {name}"
        );
    }
}

/// The --target-dir of a failed restore: absent or empty, and no staging or journal next to it.
#[track_caller]
fn assert_no_drill_left(world: &World, drill: &Path) {
    if drill.exists() {
        assert!(
            fs::read_dir(drill).unwrap().next().is_none(),
            "{} is not empty",
            drill.display()
        );
    }
    for name in names_in(world.dir.path()) {
        assert!(!name.contains(".staging-"), "staging left behind: {name}");
    }
    assert!(!world.path(RESTORE_JOURNAL).exists(), "journal left behind");
}

/// Nothing named `name` exists anywhere in the world, nor next to it or above it.
fn assert_not_written(world: &World, name: &str) {
    for entry in walkdir::WalkDir::new(world.dir.path()) {
        let entry = entry.unwrap();
        assert!(
            entry.file_name() != name,
            "{} was written",
            entry.path().display()
        );
    }
    for ancestor in world.dir.path().ancestors() {
        assert!(
            !ancestor.join(name).exists(),
            "{} was written",
            ancestor.join(name).display()
        );
    }
}

/// No symbolic link, and no file with a second name, anywhere in the world.
fn assert_no_links(world: &World) {
    for entry in walkdir::WalkDir::new(world.dir.path()) {
        let entry = entry.unwrap();
        assert!(
            !entry.path_is_symlink(),
            "symlink {} was created",
            entry.path().display()
        );
        let meta = entry.metadata().unwrap();
        assert!(
            !meta.is_file() || meta.nlink() == 1,
            "{} has {} names: a hard link was created",
            entry.path().display(),
            meta.nlink()
        );
    }
}

/// Runs verify-backup, a live restore and a restore into a new --target-dir of backup `id`;
/// each must fail with `code` naming every needle, and change nothing.
fn assert_refused(world: &World, id: &str, code: u8, needles: &[&str]) {
    let before = live_state(&world.data);
    let drill = world.path("drill");
    let drill_arg = drill.to_str().unwrap();
    assert_fails(&world.run(&["verify-backup", id]), code, needles);
    assert_fails(&world.run(&["restore-backup", id]), code, needles);
    assert_same_tree(
        &live_state(&world.data),
        &before,
        "live data after a refused restore",
    );
    assert_refused_restore_left_nothing(world);
    let out = world.run(&["restore-backup", id, "--target-dir", drill_arg]);
    assert_fails(&out, code, needles);
    assert_no_drill_left(world, &drill);
    assert_same_tree(
        &live_state(&world.data),
        &before,
        "live data after a refused --target-dir restore",
    );
}

// ---------------------------------------------------------------------------------------------
// 1–4: members that must never reach the disk
// ---------------------------------------------------------------------------------------------

#[test]
fn parent_dir_members_are_refused() {
    let world = World::new();
    let u = unique_prefix("escape");
    let names = [
        format!("../{u}-1.txt"),
        format!("media/local_content/../../../{u}-2"),
        format!("./../{u}-3"),
        format!("media/local_content/ab/../../../../../../../../{u}-4"),
    ];
    for (n, name) in names.iter().enumerate() {
        let id = format!("backup-2026010112000000000{n}");
        let tar = backup_tar(
            &id,
            &[Member::file(name, b"planted by a hostile archive\n")],
        );
        store_encrypted(&world, &id, &tar);
        // The error names the member as read, after a leading "./" is dropped.
        let named = name.trim_start_matches("./");
        assert_refused(
            &world,
            &id,
            exit::CORRUPT,
            &["unsafe member", named, "'..'"],
        );
    }
    // The same escape in a backup without manifest, as the charm's pipeline makes them.
    let charm = format!("data/media_store/../../../{u}-5");
    store_encrypted(
        &world,
        "backup-20260101120000000009",
        &tar_with(&[Member::file(&charm, b"x")]),
    );
    assert_refused(
        &world,
        "backup-20260101120000000009",
        exit::CORRUPT,
        &["unsafe member", &charm],
    );
    for n in 1..=5 {
        let suffix = if n == 1 { ".txt" } else { "" };
        assert_not_written(&world, &format!("{u}-{n}{suffix}"));
    }
}

#[test]
fn long_and_pax_names_are_checked_too() {
    let world = World::new();
    let u = unique_prefix("longname");
    // A GNU long name (over 100 bytes) that climbs out, the real name in a ././@LongLink member.
    let long = format!(
        "media/local_content/{}/../../../../../../../../../../{u}-long",
        "x/".repeat(40)
    );
    assert!(long.len() > 100);
    let gnu = backup_tar(
        ID,
        &[
            Member::raw(
                "././@LongLink",
                EntryType::GNULongName,
                format!("{long}\0").as_bytes(),
            ),
            Member::file(
                "media/local_content/lo/ng/placeholder",
                b"long name payload\n",
            ),
        ],
    );
    store_encrypted(&world, ID, &gnu);
    assert_refused(&world, ID, exit::CORRUPT, &["unsafe member", &long]);

    // A PAX `path` record overrides a harmless header name.
    let pax_id = "backup-20260101120000000001";
    let pax_name = format!("../{u}-pax");
    let pax = backup_tar(
        pax_id,
        &[
            Member::raw(
                "PaxHeaders/payload",
                EntryType::XHeader,
                &pax_record("path", &pax_name),
            ),
            Member::file("media/local_content/pa/xx/payload", b"pax payload\n"),
        ],
    );
    store_encrypted(&world, pax_id, &pax);
    assert_refused(&world, pax_id, exit::CORRUPT, &["unsafe member", &pax_name]);

    assert_not_written(&world, &format!("{u}-long"));
    assert_not_written(&world, &format!("{u}-pax"));
    assert!(!world
        .path("drill/media/local_content/pa/xx/payload")
        .exists());
}

#[test]
fn absolute_members_are_refused() {
    let world = World::new();
    let u = unique_prefix("absolute");
    let name = format!("/tmp/{u}/abs.txt");
    let tar = backup_tar(ID, &[Member::file(&name, b"planted at an absolute path\n")]);
    store_encrypted(&world, ID, &tar);
    assert_refused(
        &world,
        ID,
        exit::CORRUPT,
        &["unsafe member", &name, "absolute"],
    );
    assert!(!Path::new("/tmp").join(&u).exists(), "/tmp/{u} was created");
    assert_not_written(&world, &u);
}

#[test]
fn symlink_and_hard_link_members_are_refused() {
    let world = World::new();
    // Something outside the data dir that a link could reach and a later member overwrite.
    let outside = world.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret");
    fs::write(&secret, b"must stay as it is\n").unwrap();
    let outside_str = outside.to_str().unwrap();
    let secret_str = secret.to_str().unwrap();

    let cases: Vec<(Vec<Member>, &str, &str)> = vec![
        (
            vec![Member::symlink(
                "media/local_content/ab/link",
                "/etc/passwd",
            )],
            "media/local_content/ab/link",
            "symbolic link",
        ),
        (
            // The classic: a link to a folder outside, then a file written through it.
            vec![
                Member::symlink("media/local_content/ab/dir", outside_str),
                Member::file(
                    "media/local_content/ab/dir/planted",
                    b"through the symlink\n",
                ),
            ],
            "media/local_content/ab/dir",
            "symbolic link",
        ),
        (
            vec![Member::symlink(
                "media/local_content/ab/rel",
                "../../../../../outside/secret",
            )],
            "media/local_content/ab/rel",
            "symbolic link",
        ),
        (
            // A hard link to a file outside, then new content for the same name.
            vec![
                Member::hard_link("media/local_content/ab/hard", secret_str),
                Member::file(
                    "media/local_content/ab/hard",
                    b"overwritten through the hard link\n",
                ),
            ],
            "media/local_content/ab/hard",
            "hard link",
        ),
        (
            vec![Member::hard_link(
                "media/local_content/ab/passwd",
                "/etc/passwd",
            )],
            "media/local_content/ab/passwd",
            "hard link",
        ),
    ];
    for (n, (members, offender, what)) in cases.iter().enumerate() {
        let id = format!("backup-2026010112000000000{n}");
        store_encrypted(&world, &id, &backup_tar(&id, members));
        assert_refused(
            &world,
            &id,
            exit::CORRUPT,
            &["unsafe member", offender, what],
        );
    }
    assert_eq!(fs::read(&secret).unwrap(), b"must stay as it is\n");
    assert!(
        !outside.join("planted").exists(),
        "a file was written through a symlink"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_no_links(&world);
}

#[test]
fn device_and_fifo_members_are_refused() {
    let world = World::new();
    let cases = [
        (
            Member::device("media/local_content/ab/tty", EntryType::Char, 5, 0),
            "character device",
        ),
        (
            Member::device("media/local_content/ab/sda", EntryType::Block, 8, 0),
            "block device",
        ),
        (
            Member::device("media/local_content/ab/fifo", EntryType::Fifo, 0, 0),
            "FIFO",
        ),
    ];
    for (n, (member, what)) in cases.iter().enumerate() {
        let id = format!("backup-2026010112000000000{n}");
        store_encrypted(&world, &id, &backup_tar(&id, std::slice::from_ref(member)));
        assert_refused(
            &world,
            &id,
            exit::CORRUPT,
            &["unsafe member", &member.name, what],
        );
    }
    for entry in walkdir::WalkDir::new(world.dir.path()) {
        let entry = entry.unwrap();
        let kind = entry.file_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "{} is a special file",
            entry.path().display()
        );
    }
}

#[test]
fn file_and_folder_at_one_path_is_refused() {
    // Both members are listed with their true hashes, but no restore can write both.
    let world = World::new();
    let members = [
        Member::file("media/local_content/ab/cd", b"a file\n"),
        Member::file("media/local_content/ab/cd/ef", b"a file below a file\n"),
    ];
    store_encrypted(&world, ID, &backup_tar(ID, &members));
    assert_refused(&world, ID, exit::CORRUPT, &["media/local_content/ab/cd"]);
}

// ---------------------------------------------------------------------------------------------
// 5: set-id bits are dropped, the archive is otherwise fine
// ---------------------------------------------------------------------------------------------

#[test]
fn setid_and_world_writable_modes_are_dropped() {
    let world = World::new();
    // Folder members too: all bits asked for one, none for the other.
    let folders = [
        Member::raw("media/local_content/su", EntryType::Directory, b"").with_mode(0o7777),
        Member::raw("media/local_content/su/id", EntryType::Directory, b"").with_mode(0o000),
    ];
    let members = [
        Member::file("media/local_content/su/id/setuid", b"set-id payload\n").with_mode(0o6755),
        Member::file("media/local_content/su/id/everything", b"all bits\n").with_mode(0o7777),
        Member::file("config/homeserver.yaml", b"server_name: example.test\n").with_mode(0o4666),
    ];
    let all: Vec<Member> = folders.iter().chain(members.iter()).cloned().collect();
    store_encrypted(&world, ID, &backup_tar(ID, &all));
    assert_success(&world.run(&["verify-backup", ID]), "verify-backup");

    let drill = world.restore_drill(ID, "restore-backup --target-dir");
    let folder_mode =
        |rel: &str| fs::metadata(drill.join(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(folder_mode("media/local_content/su"), 0o775);
    assert_eq!(folder_mode("media/local_content/su/id"), 0o700);
    for member in &members {
        let restored = drill.join(&member.name);
        assert_eq!(fs::read(&restored).unwrap(), member.data, "{}", member.name);
        let mode = fs::metadata(&restored).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode & 0o7000,
            0,
            "{} kept set-id/sticky bits: {mode:o}",
            member.name
        );
        assert_eq!(
            mode & 0o002,
            0,
            "{} is world-writable: {mode:o}",
            member.name
        );
        assert_eq!(
            mode & 0o600,
            0o600,
            "{} is not readable and writable by its owner: {mode:o}",
            member.name
        );
    }
    for entry in walkdir::WalkDir::new(&drill) {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode & 0o6002,
            0,
            "{} has mode {mode:o}",
            entry.path().display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6: a real backup that disagrees with its manifest
// ---------------------------------------------------------------------------------------------

/// A member of a real backup's tar: its path, its header and its content.
struct RealMember {
    path: String,
    header: Header,
    data: Vec<u8>,
}

/// The members of any object in the world's store, decrypted with the real gpg.
fn members_of(world: &World, object: &Path) -> Vec<RealMember> {
    let out = gpg_decrypt(object, &world.passphrase_file);
    assert!(
        out.status.success(),
        "gpg {}: {}",
        object.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut archive = tar::Archive::new(&out.stdout[..]);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            RealMember { path, header, data }
        })
        .collect()
}

/// Decrypts backup `id` with the real gpg and reads its members in order.
fn unpack(world: &World, id: &str) -> Vec<RealMember> {
    let members = members_of(world, &world.object(id));
    assert_eq!(
        members.first().map(|m| m.path.as_str()),
        Some("manifest.json")
    );
    assert_eq!(
        members.last().map(|m| m.path.as_str()),
        Some("manifest-files.json")
    );
    members
}

/// Writes `members` into a new tar. Names that fit the header are copied byte for byte (the tar
/// crate's own path setter would drop a leading `./`); longer ones get a GNU long-name member.
fn repack(members: &[RealMember]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = member.header.clone();
        header.set_size(member.data.len() as u64);
        let name = member.path.as_bytes();
        if name.len() < 100 {
            let field = &mut header.as_old_mut().name;
            field.fill(0);
            field[..name.len()].copy_from_slice(name);
            header.set_cksum();
            builder.append(&header, &member.data[..]).unwrap();
        } else {
            builder
                .append_data(&mut header, &member.path, &member.data[..])
                .unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// Index of the first regular data file of a real backup's base (a config file: media are in
/// volumes since format 2, and `incremental` tampers with those).
fn media_index(members: &[RealMember]) -> usize {
    members
        .iter()
        .position(|m| m.path.starts_with("config/") && m.header.entry_type().is_file())
        .expect("a data file in the backup")
}

fn edit_json(member: &mut RealMember, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_slice(&member.data).unwrap();
    edit(&mut value);
    member.data = serde_json::to_vec(&value).unwrap();
}

const TAMPERED: &str = "backup-20000101000000000000";

/// Makes a real backup, lets `edit` change its members, and stores the result re-encrypted as
/// [`TAMPERED`]. Returns what `edit` returned (the name of the member it changed).
fn tampered<T>(world: &World, edit: impl FnOnce(&mut Vec<RealMember>) -> T) -> T {
    let original = world.create_backup();
    let mut members = unpack(world, &original);
    // Stored under another name, so renamed inside too: a header naming another backup than
    // its object is refused as a rollback before any other check.
    let last = members.len() - 1;
    for at in [0, last] {
        edit_json(&mut members[at], |v| v["backup_id"] = json!(TAMPERED));
    }
    let named = edit(&mut members);
    store_encrypted(world, TAMPERED, &repack(&members));
    named
}

#[test]
fn repacked_real_backup_is_still_sound() {
    // The control for the tests below: unpacking and repacking alone breaks nothing.
    let world = World::new();
    tampered(&world, |_| ());
    assert_success(&world.run(&["verify-backup", TAMPERED]), "verify-backup");
    let drill = world.path("drill");
    let out = world.run(&[
        "restore-backup",
        TAMPERED,
        "--target-dir",
        drill.to_str().unwrap(),
    ]);
    assert_success(&out, "restore-backup --target-dir");
    assert_eq!(
        tree_hashes(&drill.join("media/local_content")),
        tree_hashes(&world.data.join("media_store/local_content"))
    );
}

#[test]
fn missing_member_is_refused() {
    let world = World::new();
    let dropped = tampered(&world, |members| members.remove(media_index(members)).path);
    assert_refused(
        &world,
        TAMPERED,
        exit::CORRUPT,
        &[&dropped, "not in the archive"],
    );
}

#[test]
fn member_missing_from_the_list_is_refused() {
    let world = World::new();
    let extra = "media/local_content/zz/yy/not-in-the-list";
    tampered(&world, |members| {
        let mut header = members[media_index(members)].header.clone();
        header.set_size(5);
        let at = members.len() - 1;
        members.insert(
            at,
            RealMember {
                path: extra.into(),
                header,
                data: b"extra".to_vec(),
            },
        );
    });
    assert_refused(
        &world,
        TAMPERED,
        exit::CORRUPT,
        &[extra, "not in the manifest"],
    );
    assert!(!world.data.join("media_store/local_content/zz").exists());
}

#[test]
fn changed_content_is_refused() {
    let world = World::new();
    let changed = tampered(&world, |members| {
        let at = media_index(members);
        let member = &mut members[at];
        let middle = member.data.len() / 2;
        member.data[middle] ^= 0x01;
        member.path.clone()
    });
    assert_refused(&world, TAMPERED, exit::CORRUPT, &[&changed, "SHA-256"]);
}

#[test]
fn changed_size_is_refused() {
    let world = World::new();
    let (changed, size) = tampered(&world, |members| {
        let at = media_index(members);
        let member = &mut members[at];
        member.data.push(b'!');
        (member.path.clone(), member.data.len())
    });
    let says = format!("{size} bytes");
    assert_refused(
        &world,
        TAMPERED,
        exit::CORRUPT,
        &[&changed, &says, "the manifest says"],
    );
}

#[test]
fn another_server_name_in_the_manifest_is_refused() {
    let world = World::new();
    tampered(&world, |members| {
        edit_json(&mut members[0], |h| h["server_name"] = json!("other.test"))
    });
    let before = live_state(&world.data);
    let out = world.run(&["restore-backup", TAMPERED]);
    assert_fails(
        &out,
        exit::REFUSED,
        &["server_name", "other.test", SERVER_NAME],
    );
    assert_same_tree(&live_state(&world.data), &before, "live data");
    assert_refused_restore_left_nothing(&world);
    // The archive itself is consistent: verifying it (which knows no target) passes.
    let verified = world.run(&["verify-backup", TAMPERED]);
    assert_success(&verified, "verify-backup");
    assert!(String::from_utf8_lossy(&verified.stdout).contains("other.test"));
}

#[test]
fn dot_slash_manifest_name_keeps_the_server_name_check() {
    // A real backup of another server, repacked the way `tar -c -C dir .` names members: the
    // member check reads `./manifest.json` as the manifest, so the restore must also apply the
    // manifest's safety rules to it.
    let other = World::with(WorldOptions {
        server_name: "other.test",
        seed: 5,
        ..Default::default()
    });
    let source = other.create_backup();
    let mut members = unpack(&other, &source);
    members[0].path = "./manifest.json".into();
    let last = members.len() - 1;
    for at in [0, last] {
        edit_json(&mut members[at], |v| v["backup_id"] = json!(TAMPERED));
    }
    let world = World::new();
    store_encrypted(&world, TAMPERED, &repack(&members));

    let before = live_state(&world.data);
    let out = world.run(&["restore-backup", TAMPERED]);
    assert_fails(&out, exit::REFUSED, &["server_name", "other.test"]);
    assert_same_tree(&live_state(&world.data), &before, "live data");
    assert_refused_restore_left_nothing(&world);
}

#[test]
fn newer_format_version_is_refused() {
    let world = World::new();
    tampered(&world, |members| {
        edit_json(&mut members[0], |h| h["format_version"] = json!(99))
    });
    assert_refused(&world, TAMPERED, exit::REFUSED, &["newer", "99"]);
}

#[test]
fn newer_format_version_in_the_file_list_is_refused() {
    let world = World::new();
    tampered(&world, |members| {
        let last = members.len() - 1;
        edit_json(&mut members[last], |l| l["format_version"] = json!(99));
    });
    assert_refused(&world, TAMPERED, exit::REFUSED, &["newer", "99"]);
}

#[test]
fn backup_without_its_file_list_is_refused() {
    let world = World::new();
    tampered(&world, |members| members.pop());
    assert_refused(
        &world,
        TAMPERED,
        exit::CORRUPT,
        &["manifest-files.json", "cut short"],
    );
}

#[test]
fn member_after_the_file_list_is_refused() {
    let world = World::new();
    let late = "media/local_content/zz/yy/after-the-list";
    tampered(&world, |members| {
        let mut header = members[media_index(members)].header.clone();
        header.set_size(4);
        members.push(RealMember {
            path: late.into(),
            header,
            data: b"late".to_vec(),
        });
    });
    assert_refused(
        &world,
        TAMPERED,
        exit::CORRUPT,
        &[late, "after the file list"],
    );
}

#[test]
fn duplicated_member_is_refused() {
    let world = World::new();
    let twice = tampered(&world, duplicate_a_media_member);
    // verify says the member "appears twice"; a restore says the file "is written twice".
    let within_media = twice.rsplit('/').next().unwrap();
    assert_refused(&world, TAMPERED, exit::CORRUPT, &[within_media, "twice"]);
}

#[test]
fn duplicated_member_is_named_by_a_live_restore() {
    let world = World::new();
    let twice = tampered(&world, duplicate_a_media_member);
    assert_fails(
        &world.run(&["restore-backup", TAMPERED]),
        exit::CORRUPT,
        &[&twice, "twice"],
    );
}

/// Stores the first media member a second time, right after itself; returns its path.
fn duplicate_a_media_member(members: &mut Vec<RealMember>) -> String {
    let at = media_index(members);
    let copy = RealMember {
        path: members[at].path.clone(),
        header: members[at].header.clone(),
        data: members[at].data.clone(),
    };
    members.insert(at + 1, copy);
    members[at].path.clone()
}

#[test]
fn file_list_of_another_backup_is_refused() {
    let world = World::new();
    tampered(&world, |members| {
        let last = members.len() - 1;
        edit_json(&mut members[last], |l| {
            l["backup_id"] = json!("backup-19990101000000000000")
        });
    });
    assert_refused(&world, TAMPERED, exit::CORRUPT, &["another backup"]);
}

// ---------------------------------------------------------------------------------------------
// 7: objects that are not passphrase-encrypted
// ---------------------------------------------------------------------------------------------

#[test]
fn unencrypted_tar_object_is_refused() {
    let world = World::new();
    store_object(
        &world,
        ID,
        &backup_tar(
            ID,
            &[Member::file("media/local_content/pl/ai/n", b"plain\n")],
        ),
    );
    assert_refused(&world, ID, exit::CORRUPT, &["OpenPGP"]);
}

#[test]
fn literal_only_openpgp_messages_are_refused() {
    let world = World::new();
    let tar = backup_tar(
        ID,
        &[Member::file("media/local_content/li/te/ral", b"literal\n")],
    );
    let home = gnupg_home();
    let objects = [
        (
            "backup-20260101120000000000",
            run_gpg(&home, &["--compress-algo", "none", "--store"], &tar),
        ),
        (
            "backup-20260101120000000001",
            run_gpg(&home, &["--compress-algo", "zlib", "--store"], &tar),
        ),
    ];
    for (id, object) in &objects {
        store_object(&world, id, object);
        assert_refused(&world, id, exit::CORRUPT, &["not encrypted"]);
    }
}

#[test]
fn signed_only_openpgp_message_is_refused() {
    let world = World::new();
    let tar = backup_tar(
        ID,
        &[Member::file("media/local_content/si/gn/ed", b"signed\n")],
    );
    let home = tempfile::tempdir().unwrap();
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let keygen = [
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        "Hostile Signer <signer@example.test>",
        "ed25519",
        "sign",
        "never",
    ];
    run_gpg(home.path(), &keygen, b"");
    let signed = run_gpg(home.path(), &["--sign"], &tar);
    // Stop the agent that signing started in the private home.
    let _ = Command::new("gpgconf")
        .args(["--kill", "gpg-agent"])
        .env("GNUPGHOME", home.path())
        .status();
    store_object(&world, ID, &signed);
    assert_refused(&world, ID, exit::CORRUPT, &["not encrypted"]);
}

#[test]
fn encrypted_garbage_is_not_a_tar() {
    let world = World::new();
    store_encrypted(&world, ID, b"this is not a tar archive at all\n");
    // verify says "broken tar member header", restore "broken first member".
    assert_refused(&world, ID, exit::CORRUPT, &["damaged", "broken"]);
}

// ---------------------------------------------------------------------------------------------
// Declared lengths far beyond the data
// ---------------------------------------------------------------------------------------------

/// Runs the tool under a 2 GiB address-space limit: trusting a declared length of several GiB
/// (allocating it) would abort the process instead of failing with an error.
fn run_limited(world: &World, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" \"$@\"")
        .arg(binary())
        .arg("--config")
        .arg(&world.config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn huge_declared_lengths_are_truncation_not_allocation() {
    let world = World::new();
    let real = world.create_backup();
    let object = fs::read(world.object(&real)).unwrap();
    // The tool's objects start with a new-format SKESK packet (tag 3, one-byte length), then the
    // encrypted data packet (tag 18) in partial-length chunks.
    assert_eq!(object[0], 0xC3, "SKESK packet first");
    let skesk_end = 2 + object[1] as usize;
    assert_eq!(object[skesk_end], 0xD2, "SEIPD packet second");
    let mut packet_lie = object[..skesk_end].to_vec();
    // A five-octet length: 4 GiB - 16 bytes, of which only 64 KiB follow.
    packet_lie.extend_from_slice(&[0xD2, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0]);
    packet_lie.extend_from_slice(&object[skesk_end + 2..skesk_end + 2 + 65536]);
    // Under the real backup's own name, which its header gives.
    let packet_id = real.as_str();
    store_object(&world, packet_id, &packet_lie);

    // A tar member whose header claims 8 GiB but holds 11 bytes.
    let mut tar_lie = backup_tar(
        ID,
        &[Member::file(
            "media/local_content/hu/ge/size",
            b"eleven byte",
        )],
    );
    let header_at = tar_lie
        .windows(b"media/local_content/hu/ge/size".len())
        .position(|w| w == b"media/local_content/hu/ge/size")
        .unwrap();
    let header = &mut tar_lie[header_at..header_at + 512];
    header[124..136].copy_from_slice(b"77777777777\0");
    header[148..156].copy_from_slice(b"        ");
    let checksum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    store_encrypted(&world, ID, &tar_lie);

    for (id, needle) in [(packet_id, "truncated"), (ID, "damaged")] {
        let before = live_state(&world.data);
        for args in [vec!["verify-backup", id], vec!["restore-backup", id]] {
            let out = run_limited(&world, &args);
            assert_fails(&out, exit::CORRUPT, &[needle]);
        }
        assert_same_tree(&live_state(&world.data), &before, "live data");
        assert_refused_restore_left_nothing(&world);
    }
}

/// The media entries of a format-3 backup whose base is `base`, as format 2's file list has
/// them: its runs (decrypted with the real gpg) merged, the newest line of a path winning.
fn media_entries_of(world: &World, base: &[RealMember]) -> Vec<Value> {
    let runs = base.iter().find(|m| m.path == "volumes/runs.list").unwrap();
    let mut entries = std::collections::BTreeMap::new();
    for run in String::from_utf8(runs.data.clone()).unwrap().lines() {
        let run = members_of(world, &world.store.join(run));
        for line in String::from_utf8(run[0].data.clone()).unwrap().lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if line.starts_with('#') {
                continue;
            }
            if f[1] == "gone" {
                entries.remove(f[0]);
                continue;
            }
            entries.insert(
                f[0].to_string(),
                json!({
                    "role": "media", "path": f[0], "size": f[2].parse::<u64>().unwrap(),
                    "mode": u32::from_str_radix(f[3], 8).unwrap(),
                    "mtime": f[4].parse::<i64>().unwrap(),
                    "mtime_nanos": f[5].parse::<u32>().unwrap(), "sha256": f[6],
                    "storage": {"kind": "volume", "volume": f[1]},
                }),
            );
        }
    }
    entries.into_values().collect()
}

// ---------------------------------------------------------------------------------------------
// Format 2, as the last release wrote it
// ---------------------------------------------------------------------------------------------

/// A format-2 backup (the whole file list in its base and in its index, one list per volume),
/// built from a real format-3 one in place: it verifies and restores as before, it is the
/// parent of the next backup, which takes its media over and writes its whole list as one
/// run, and deleting it keeps the volume the new backup uses.
#[test]
fn a_format_2_backup_restores_and_is_the_parent_of_a_format_3_one() {
    let world = World::with(WorldOptions {
        extra_config: "[retention]\ndelete-grace-secs = 0\n",
        ..WorldOptions::default()
    });
    let id = world.create_backup();
    let base = unpack(&world, &id);
    let media_entries = media_entries_of(&world, &base);
    assert!(!media_entries.is_empty());
    let mut members: Vec<RealMember> = base
        .into_iter()
        .filter(|m| !m.path.starts_with("volumes/"))
        .collect();
    let mut list = members.pop().unwrap();
    let mut volumes = Vec::new();
    edit_json(&mut members[0], |h| {
        h["format_version"] = json!(2);
        let media = h["media"].as_object_mut().unwrap();
        media.remove("runs");
        for volume in media["volumes"].as_array().unwrap() {
            volumes.push(volume["name"].as_str().unwrap().to_string());
        }
    });
    for volume in &volumes {
        let paths: String = media_entries
            .iter()
            .filter(|e| e["storage"]["volume"] == volume.as_str())
            .map(|e| format!("{}\n", e["path"].as_str().unwrap()))
            .collect();
        let mut header = members[1].header.clone();
        header.set_size(paths.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o600);
        members.push(RealMember {
            path: format!("{volume}.list"),
            header,
            data: paths.into_bytes(),
        });
    }
    edit_json(&mut list, |l| {
        l["format_version"] = json!(2);
        l["files"]
            .as_array_mut()
            .unwrap()
            .extend(media_entries.clone());
    });
    members.push(list);
    store_encrypted(&world, &id, &repack(&members));
    let index = json!({"format_version": 2, "backup_id": id, "files": media_entries});
    let mut index_header = tar::Header::new_gnu();
    index_header.set_mode(0o600);
    index_header.set_entry_type(tar::EntryType::Regular);
    let index_tar = repack(&[RealMember {
        path: "manifest-files.json".into(),
        header: index_header,
        data: serde_json::to_vec(&index).unwrap(),
    }]);
    fs::create_dir_all(world.store.join("index")).unwrap();
    fs::write(
        world.store.join("index").join(&id),
        gpg_encrypt(&index_tar, &world.passphrase_file, &[]),
    )
    .unwrap();
    fs::remove_file(world.store.join(format!("volumes/{id}-files"))).unwrap();

    assert_success(
        &world.run(&["verify-backup", &id]),
        "verify the format-2 backup",
    );
    let drill = world.restore_drill(&id, "restore the format-2 backup");
    let media = |root: &Path| tree_hashes(&root.join("local_content"));
    assert_eq!(
        media(&drill.join("media")),
        media(&world.data.join("media_store"))
    );
    fs::remove_dir_all(&drill).unwrap();

    world.upload_media("aftertheupgradeAAAAAAAAA", 5_000, 9);
    let out = world.run(&["--json", "create-backup"]);
    assert_success(&out, "create-backup on a format-2 parent");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["kind"], "incremental", "{created}");
    assert_eq!(created["parent"], id.as_str(), "{created}");
    assert!(created["reused-files"].as_u64().unwrap() > 0, "{created}");
    let next = created["backup-id"].as_str().unwrap().to_string();
    assert!(world.store.join(format!("volumes/{next}-files")).exists());
    let deleted = world.run(&["--json", "delete-backup", &id]);
    assert_success(&deleted, "delete the format-2 backup");
    assert!(world.store.join(&volumes[0]).exists());
    assert_success(
        &world.run(&["verify-backup", &next]),
        "verify the format-3 child",
    );
    let drill = world.restore_drill(&next, "restore the format-3 child");
    assert_eq!(
        media(&drill.join("media")),
        media(&world.data.join("media_store"))
    );
}

// ---------------------------------------------------------------------------------------------
// Format 1, as the first release wrote it
// ---------------------------------------------------------------------------------------------

/// A format-1 backup (every file inline, no volumes), built from a real format-2 one the way
/// the first release laid it out, restores and verifies as before, and is never the parent of
/// an incremental backup.
#[test]
fn a_format_1_backup_restores_and_is_never_a_parent() {
    let source = World::new();
    let id = source.create_backup();
    let base = unpack(&source, &id);
    let media_entries = media_entries_of(&source, &base);
    let mut media = Vec::new();
    let header: Value = serde_json::from_slice(&base[0].data).unwrap();
    for volume in header["media"]["volumes"].as_array().unwrap() {
        let volume = volume["name"].as_str().unwrap();
        media.extend(members_of(&source, &source.store.join(volume)));
    }
    assert!(!media.is_empty());
    let mut members: Vec<RealMember> = base
        .into_iter()
        .filter(|m| !m.path.starts_with("volumes/"))
        .collect();
    let list = members.pop().unwrap();
    const OLD: &str = "backup-20000102000000000000";
    edit_json(&mut members[0], |h| {
        h["format_version"] = json!(1);
        h["backup_id"] = json!(OLD);
        h.as_object_mut().unwrap().remove("media");
    });
    members.extend(media);
    let mut list = list;
    edit_json(&mut list, |l| {
        l["format_version"] = json!(1);
        l["backup_id"] = json!(OLD);
        let files = l["files"].as_array_mut().unwrap();
        files.extend(media_entries);
        for file in files {
            file["storage"] = json!({"kind": "inline"});
            file.as_object_mut().unwrap().remove("mtime_nanos");
        }
    });
    members.push(list);

    let world = World::new();
    store_encrypted(&world, OLD, &repack(&members));
    let listed = world.run(&["--json", "list-backups"]);
    assert_success(&listed, "list-backups");
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["backups"][0]["kind"], "full", "{listed}");
    assert_success(&world.run(&["verify-backup", OLD]), "verify-backup");
    let drill = world.restore_drill(OLD, "restore-backup of a format-1 backup");
    assert_eq!(
        tree_hashes(&drill.join("media/local_content")),
        tree_hashes(&source.data.join("media_store/local_content"))
    );
    let out = world.run(&["--json", "create-backup"]);
    assert_success(&out, "create-backup beside a format-1 backup");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["kind"], "full", "{created}");
}

// ---------------------------------------------------------------------------------------------
// A parent's run that breaks off half-way
// ---------------------------------------------------------------------------------------------

/// The parent's bottom run is sealed with the right passphrase and starts as its own, with the
/// count its header records, but half-way down a line names a volume the header does not: the
/// next backup meets it only as the join reads the run from disk, gives the parent up there,
/// stores every file anew, says why, and restores whole.
#[test]
fn a_parent_run_breaking_off_half_way_makes_the_next_backup_full_and_whole() {
    let world = World::new();
    let first = world.create_backup();
    world.upload_media("breakoffAAAAAAAAAAAAAAAA", 5_000, 3);
    let second = world.create_backup();
    let run = world.store.join(format!("volumes/{first}-files"));
    let mut members = members_of(&world, &run);
    assert_eq!(members.len(), 1);
    let text = String::from_utf8(members[0].data.clone()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(lines.len() > 4, "{text}");
    let middle = lines.len() / 2;
    let mut fields: Vec<&str> = lines[middle].split('\t').collect();
    fields[1] = "volumes/backup-19990101000000000000-0000";
    lines[middle] = fields.join("\t");
    members[0].data = format!("{}\n", lines.join("\n")).into_bytes();
    fs::write(
        &run,
        gpg_encrypt(&repack(&members), &world.passphrase_file, &[]),
    )
    .unwrap();

    let out = world.run(&["--json", "create-backup"]);
    assert_success(&out, "create-backup on a parent whose run breaks off");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["kind"], "full", "{created}");
    let why = created["full-reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(&second) && why.contains("does not name"),
        "{why}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broke off"), "{stderr}");
    let next = created["backup-id"].as_str().unwrap().to_string();
    assert_success(
        &world.run(&["verify-backup", &next]),
        "verify the full backup",
    );
    let drill = world.restore_drill(&next, "restore the full backup");
    let media = |root: &Path| tree_hashes(&root.join("local_content"));
    assert_eq!(
        media(&drill.join("media")),
        media(&world.data.join("media_store"))
    );
}
