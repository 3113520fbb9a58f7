//! What the drill asks of the Synapse it booted, over its loopback listener: its signing
//! keys, a short-lived admin user, media downloads and a client round trip.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use sha1::Sha1;

/// A failed probe's message.
pub type ProbeResult<T> = std::result::Result<T, String>;

/// A client of the drill's Synapse.
pub struct Probe {
    client: reqwest::Client,
    pub base: String,
    token: Option<String>,
    pub user_id: Option<String>,
}

impl Probe {
    pub fn new(port: u16) -> ProbeResult<Probe> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Probe {
            client,
            base: format!("http://127.0.0.1:{port}"),
            token: None,
            user_id: None,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> ProbeResult<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        Ok((status, bytes.to_vec()))
    }

    /// A JSON answer with a 2xx status, or an error quoting the answer.
    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> ProbeResult<Value> {
        let (status, bytes) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "{method} {path} answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: not JSON: {e}"))
    }

    /// `/_matrix/key/v2/server`: the server name and the verify keys it publishes.
    pub async fn server_keys(&self) -> ProbeResult<(String, Vec<(String, String)>)> {
        let body = self
            .json(reqwest::Method::GET, "/_matrix/key/v2/server", None)
            .await?;
        let server = body
            .get("server_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let keys = body
            .get("verify_keys")
            .and_then(Value::as_object)
            .map(|keys| {
                keys.iter()
                    .filter_map(|(id, v)| Some((id.clone(), v.get("key")?.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok((server, keys))
    }

    /// Registers an admin user through shared-secret registration (the secret exists only in
    /// the drill's config) and keeps its access token.
    pub async fn register_admin(&mut self, secret: &str) -> ProbeResult<String> {
        let path = "/_synapse/admin/v1/register";
        let nonce = self.json(reqwest::Method::GET, path, None).await?;
        let nonce = nonce
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or("the registration API gave no nonce")?
            .to_string();
        let mut rng = rand::thread_rng();
        let username = format!(
            "synapse-backup-drill-{}",
            Alphanumeric.sample_string(&mut rng, 8).to_lowercase()
        );
        let password = Alphanumeric.sample_string(&mut rng, 32);
        let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
        for (i, part) in [nonce.as_str(), &username, &password, "admin"]
            .iter()
            .enumerate()
        {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(part.as_bytes());
        }
        let mac = hex::encode(mac.finalize().into_bytes());
        let body = json!({"nonce": nonce, "username": username, "password": password, "admin": true, "mac": mac});
        let answer = self.json(reqwest::Method::POST, path, Some(body)).await?;
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("registration gave no access token")?;
        let user_id = answer
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.token = Some(token.to_string());
        self.user_id = Some(user_id.clone());
        Ok(user_id)
    }

    /// The admin API answers for the drill's user, as an admin.
    pub async fn admin_user(&self) -> ProbeResult<()> {
        let user = self.user_id.clone().unwrap_or_default();
        let body = self
            .json(
                reqwest::Method::GET,
                &format!("/_synapse/admin/v2/users/{}", encode(&user)),
                None,
            )
            .await?;
        match body.get("admin").and_then(Value::as_bool) {
            Some(true) => Ok(()),
            _ => Err(format!(
                "the admin API does not call {user} an admin: {body}"
            )),
        }
    }

    /// Downloads local media `media_id` (authenticated media, else the legacy endpoint).
    pub async fn download(&self, server: &str, media_id: &str) -> ProbeResult<Vec<u8>> {
        self.media(
            &format!("download/{}/{}", encode(server), encode(media_id)),
            "",
        )
        .await
    }

    /// A thumbnail of local media `media_id`.
    pub async fn thumbnail(
        &self,
        server: &str,
        media_id: &str,
        width: &str,
        height: &str,
        method: &str,
    ) -> ProbeResult<Vec<u8>> {
        let query = format!("?width={width}&height={height}&method={method}&allow_remote=false");
        self.media(
            &format!("thumbnail/{}/{}", encode(server), encode(media_id)),
            &query,
        )
        .await
    }

    async fn media(&self, rest: &str, query: &str) -> ProbeResult<Vec<u8>> {
        let mut last = String::new();
        for prefix in ["/_matrix/client/v1/media", "/_matrix/media/v3"] {
            let path = format!("{prefix}/{rest}{query}");
            let (status, bytes) = self.call(reqwest::Method::GET, &path, None).await?;
            if status == 200 {
                return Ok(bytes);
            }
            last = format!(
                "GET {path} answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
            // An older Synapse without authenticated media does not know the first path.
            if status != 404 && status != 405 {
                break;
            }
        }
        Err(last)
    }

    /// whoami, a new room, a message sent and read back: the client API end to end.
    pub async fn client_round_trip(&self) -> ProbeResult<String> {
        use reqwest::Method;
        let me = self
            .json(Method::GET, "/_matrix/client/v3/account/whoami", None)
            .await?;
        let user = me
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if Some(user) != self.user_id.as_deref() {
            return Err(format!("whoami answered {user:?}, not the drill's user"));
        }
        let room = self
            .json(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"preset": "private_chat", "name": "synapse-backup drill"})),
            )
            .await?;
        let room_id = room
            .get("room_id")
            .and_then(Value::as_str)
            .ok_or("createRoom gave no room_id")?;
        let text = format!(
            "drill {}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), 12)
        );
        let txn = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
        self.json(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                encode(room_id)
            ),
            Some(json!({"msgtype": "m.text", "body": text})),
        )
        .await?;
        let messages = self
            .json(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
                    encode(room_id)
                ),
                None,
            )
            .await?;
        let found = messages
            .get("chunk")
            .and_then(Value::as_array)
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e.pointer("/content/body").and_then(Value::as_str) == Some(text.as_str())
                })
            });
        if found {
            Ok(format!(
                "whoami, createRoom, send and messages answered in room {room_id}"
            ))
        } else {
            Err(format!("the message sent to {room_id} was not read back"))
        }
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The verify keys a Synapse signing key file holds: (`ed25519:<version>`, public key in
/// unpadded base64), as `/_matrix/key/v2/server` publishes them.
pub fn verify_keys_of(
    signing_key_file: &str,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut keys = Vec::new();
    for line in signing_key_file.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [algorithm, version, seed] = fields.as_slice() else {
            return Err("a line of the signing key is not `ed25519 VERSION KEY`".into());
        };
        if *algorithm != "ed25519" {
            return Err(format!(
                "the signing key's algorithm is {algorithm:?}, not ed25519"
            ));
        }
        // As lenient as Synapse's own decoder (Python's): trailing bits need not be zero.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let seed = lenient
            .decode(seed)
            .map_err(|e| format!("the signing key {version} is not base64: {e}"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| format!("the signing key {version} is not 32 bytes"))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        keys.push((
            format!("ed25519:{version}"),
            STANDARD_NO_PAD.encode(public.as_bytes()),
        ));
    }
    if keys.is_empty() {
        return Err("the signing key file is empty".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_key_gives_its_verify_key() {
        // The RFC 8032 test vector 1: this secret key has this public key.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let file = format!("ed25519 a_AbCd {}\n", STANDARD_NO_PAD.encode(&seed));
        assert_eq!(
            verify_keys_of(&file).unwrap(),
            vec![(
                "ed25519:a_AbCd".to_string(),
                STANDARD_NO_PAD.encode(&public)
            )]
        );
        assert!(verify_keys_of("rsa x y\n").is_err());
        assert!(verify_keys_of("").is_err());
    }
}
