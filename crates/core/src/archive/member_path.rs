//! The rules every member name obeys, shared by the tar layer and the manifest's file list.

use std::path::{Component, Path};

/// Checks that a member path is relative, has no `..`, and stays inside the directory it is
/// extracted into. Returns why not.
pub fn check_member_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a member has an empty name".into());
    }
    if path.contains('\0') {
        return Err(format!("member {path:?} has a NUL byte in its name"));
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("member {path:?} contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("member {path:?} is an absolute path"))
            }
        }
    }
    Ok(())
}

/// Removes a leading `./` and trailing `/` so that `./a/b/` and `a/b` name the same member.
pub fn normalize_member_path(path: &str) -> String {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        assert!(check_member_path("media/local_content/ab/cd").is_ok());
        assert!(check_member_path("../etc/passwd").is_err());
        assert!(check_member_path("a/../../b").is_err());
        assert!(check_member_path("/etc/passwd").is_err());
        assert!(check_member_path("").is_err());
        assert_eq!(normalize_member_path("./data/x/"), "data/x");
    }
}
