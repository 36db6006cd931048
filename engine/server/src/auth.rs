//! Bearer tokens, claims and roles.
//!
//! A token is `kiln_<id>_<secret>`; only an Argon2id hash of the secret is stored, and the token
//! is shown once, when created. A token carries claims directly and through roles; roles are
//! defined in `configs/roles.yaml` and may include other roles. No or an invalid token is 401,
//! a valid token without the endpoint's claim is 403.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use utoipa::ToSchema;

use kiln_store::{Store, TokenRecord};

use crate::problem::ApiError;
use crate::state::AppState;

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum Claim {
    CreateTrainingRun,
    ScheduleTrainingRun,
    DeleteTrainingRun,
    PublishTrainingRunTrainedModel,
    ViewTrainingRuns,
}

impl Claim {
    pub const ALL: [Claim; 5] = [
        Claim::CreateTrainingRun,
        Claim::ScheduleTrainingRun,
        Claim::DeleteTrainingRun,
        Claim::PublishTrainingRunTrainedModel,
        Claim::ViewTrainingRuns,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Claim::CreateTrainingRun => "CreateTrainingRun",
            Claim::ScheduleTrainingRun => "ScheduleTrainingRun",
            Claim::DeleteTrainingRun => "DeleteTrainingRun",
            Claim::PublishTrainingRunTrainedModel => "PublishTrainingRunTrainedModel",
            Claim::ViewTrainingRuns => "ViewTrainingRuns",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown claim `{s}`; claims: {}",
                    Self::ALL.map(Claim::as_str).join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDef {
    #[serde(default)]
    claims: Vec<Claim>,
    #[serde(default)]
    includes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    roles: BTreeMap<String, RoleDef>,
}

/// Role definitions: each role bundles claims and may include other roles.
#[derive(Debug, Clone)]
pub struct Roles {
    roles: BTreeMap<String, RoleDef>,
}

impl Default for Roles {
    fn default() -> Self {
        Self::parse(DEFAULT_ROLES, Path::new("(built-in roles)")).expect("built-in roles parse")
    }
}

const DEFAULT_ROLES: &str = "roles:
  viewer: {claims: [ViewTrainingRuns]}
  trainer: {includes: [viewer], claims: [CreateTrainingRun, ScheduleTrainingRun]}
  publisher: {includes: [viewer], claims: [PublishTrainingRunTrainedModel]}
  admin: {includes: [trainer, publisher], claims: [DeleteTrainingRun]}
";

impl Roles {
    /// Roles from `path`; the built-in roles (viewer, trainer, publisher, admin) when missing.
    pub fn load(path: &Path) -> Result<Self, String> {
        match kiln_workflow::limits::read_text(path, kiln_workflow::limits::MAX_FILE_BYTES) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        kiln_workflow::limits::check_yaml(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: RolesFile =
            serde_norway::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let roles = Self { roles: file.roles };
        // Every role at once: one walk finds unknown roles and cycles, each role visited once.
        let names: Vec<String> = roles.roles.keys().cloned().collect();
        roles
            .expand(&names)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(roles)
    }

    pub fn names(&self) -> Vec<&str> {
        self.roles.keys().map(String::as_str).collect()
    }

    /// All claims granted by `names`, following `includes`. Each role is visited once, so
    /// roles that include the same roles many ways cost no more than their number.
    pub fn expand(&self, names: &[String]) -> Result<HashSet<Claim>, String> {
        let mut claims = HashSet::new();
        let mut done: HashSet<&str> = HashSet::new();
        // Depth-first, without recursion: `Exit` pops a role off the current include path.
        enum Visit<'a> {
            Enter(&'a str),
            Exit(&'a str),
        }
        let mut path: Vec<&str> = Vec::new();
        let mut on_path: HashSet<&str> = HashSet::new();
        let mut stack: Vec<Visit> = names.iter().rev().map(|n| Visit::Enter(n)).collect();
        while let Some(visit) = stack.pop() {
            let name = match visit {
                Visit::Exit(name) => {
                    path.pop();
                    on_path.remove(name);
                    done.insert(name);
                    continue;
                }
                Visit::Enter(name) => name,
            };
            if done.contains(name) {
                continue;
            }
            if on_path.contains(name) {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                return Err(format!(
                    "role `{name}` includes itself ({} -> {name})",
                    path[start..].join(" -> ")
                ));
            }
            let role = self.roles.get(name).ok_or_else(|| {
                format!("unknown role `{name}`; roles: {}", self.names().join(", "))
            })?;
            claims.extend(role.claims.iter().copied());
            path.push(name);
            on_path.insert(name);
            stack.push(Visit::Exit(name));
            stack.extend(role.includes.iter().rev().map(|i| Visit::Enter(i.as_str())));
        }
        Ok(claims)
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub claims: HashSet<Claim>,
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Create a token; returns the token text (shown once) and its record.
pub async fn issue_token(
    store: &Store,
    roles: &Roles,
    name: &str,
    claims: &[Claim],
    role_names: &[String],
) -> Result<(String, TokenRecord), String> {
    if name.trim().is_empty() {
        return Err("a token needs a --name".into());
    }
    roles.expand(role_names)?;
    if claims.is_empty() && role_names.is_empty() {
        return Err("give the token at least one --claims or --roles".into());
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = random_hex();
    let salt_bytes = uuid::Uuid::new_v4();
    let salt = SaltString::encode_b64(salt_bytes.as_bytes()).map_err(|e| e.to_string())?;
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| e.to_string())?
        .to_string();
    let claim_names: Vec<String> = claims.iter().map(|c| c.as_str().to_owned()).collect();
    let record = store
        .create_token(&id, name, &hash, &claim_names, role_names)
        .await
        .map_err(|e| e.to_string())?;
    Ok((format!("kiln_{id}_{secret}"), record))
}

/// The parts of authentication that protect the server: a bounded pool of blocking threads for
/// Argon2 (never the async workers), a short-lived cache of verified tokens (keyed by the
/// SHA-256 of the whole token, never the secret itself), and a lockout of token ids after
/// repeated failures, answered 429 without hashing. Both maps are bounded: only ids that exist
/// in the store ever get an entry, and each map is capped besides.
pub(crate) struct AuthGuard {
    hashing: Arc<Semaphore>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// One verification at a time per token (by the SHA-256 of the whole token): a burst of
    /// requests with a token not verified yet (a server just started, a new engine) waits for
    /// the first one's outcome instead of each hashing, and counting against the lockout.
    verifying: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, Failures>>,
    max_failures: u32,
    lockout: Duration,
}

struct Verified {
    token_id: String,
    /// SHA-256 of the stored hash: a token whose record changed is verified again.
    stored: [u8; 32],
    at: Instant,
}

struct Failures {
    window_start: Instant,
    failed: u32,
    /// Verifications in progress: they count against the limit until they end.
    pending: u32,
    locked_until: Option<Instant>,
}

/// How long a verified token is trusted without hashing again (revocation is still checked
/// against the store on every request).
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Most entries in either map.
const MAX_ENTRIES: usize = 10_000;
/// Longest token id and secret accepted (issued ones are 12 and 64 characters).
const MAX_ID_LEN: usize = 64;
const MAX_SECRET_LEN: usize = 256;

impl AuthGuard {
    pub(crate) fn new(max_failures: u32, lockout: Duration) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
        Self {
            hashing: Arc::new(Semaphore::new(threads)),
            verified: Mutex::new(HashMap::new()),
            verifying: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            max_failures,
            lockout,
        }
    }

    fn is_verified(&self, key: &[u8; 32], token_id: &str, stored: &[u8; 32]) -> bool {
        let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).is_some_and(|v| {
            v.token_id == token_id && v.stored == *stored && v.at.elapsed() < VERIFIED_TTL
        })
    }

    fn remember(&self, key: [u8; 32], token_id: &str, stored: [u8; 32]) {
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, v| v.at.elapsed() < VERIFIED_TTL);
            if cache.len() >= MAX_ENTRIES
                && let Some(oldest) = cache.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            key,
            Verified {
                token_id: token_id.to_owned(),
                stored,
                at: Instant::now(),
            },
        );
    }

    /// The lock under which `key` is verified (see `verifying`).
    fn verifying(&self, key: &[u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        self.verifying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(*key)
            .or_default()
            .clone()
    }

    /// Forgets `key`'s lock once no request holds or waits for it.
    fn done_verifying(&self, key: &[u8; 32], lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.verifying.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&lock) <= 2 {
            map.remove(key);
        }
    }

    /// Reserve one verification of `token_id`, or how long it is locked out.
    fn begin(&self, token_id: &str) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(token_id) {
            let lockout = self.lockout;
            map.retain(|_, f| {
                f.pending > 0
                    || f.locked_until.is_some_and(|t| t > now)
                    || now.duration_since(f.window_start) < lockout
            });
            if map.len() >= MAX_ENTRIES
                && let Some(oldest) = map
                    .iter()
                    .filter(|(_, f)| f.pending == 0)
                    .min_by_key(|(_, f)| f.window_start)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let f = map.entry(token_id.to_owned()).or_insert(Failures {
            window_start: now,
            failed: 0,
            pending: 0,
            locked_until: None,
        });
        if let Some(until) = f.locked_until {
            if until > now {
                return Err(until - now);
            }
            f.locked_until = None;
            f.failed = 0;
            f.window_start = now;
        }
        if now.duration_since(f.window_start) >= self.lockout {
            f.failed = 0;
            f.window_start = now;
        }
        if f.failed + f.pending >= self.max_failures {
            // Verifications in progress fill the budget: their outcome decides.
            return Err(Duration::from_secs(1));
        }
        f.pending += 1;
        Ok(Attempt {
            guard: self,
            token_id: token_id.to_owned(),
            done: false,
        })
    }
}

/// One reserved verification; releases its reservation however it ends.
struct Attempt<'a> {
    guard: &'a AuthGuard,
    token_id: String,
    done: bool,
}

impl Attempt<'_> {
    fn finish(mut self, ok: bool) {
        self.done = true;
        let mut map = self
            .guard
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ok {
            map.remove(&self.token_id);
            return;
        }
        if let Some(f) = map.get_mut(&self.token_id) {
            f.pending = f.pending.saturating_sub(1);
            f.failed += 1;
            if f.failed >= self.guard.max_failures {
                f.locked_until = Some(Instant::now() + self.guard.lockout);
                tracing::warn!(target: "errors.api", token_id = %self.token_id,
                    failures = f.failed, "token id locked out after failed authentications");
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut map = self
                .guard
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(f) = map.get_mut(&self.token_id) {
                f.pending = f.pending.saturating_sub(1);
            }
        }
    }
}

/// The token of an `Authorization` header: the scheme `Bearer` in any case (RFC 9110), one or
/// more blanks, the token.
fn bearer_token(header: &str) -> Result<&str, ApiError> {
    let usage = || {
        ApiError::unauthorized(
            "use `Authorization: Bearer <token>` (create a token with `kiln token create`)",
        )
    };
    let (scheme, rest) = header
        .trim_start()
        .split_once([' ', '\t'])
        .ok_or_else(usage)?;
    let token = rest.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(usage());
    }
    Ok(token)
}

async fn authenticate(state: &AppState, header: &str) -> Result<Caller, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "the bearer token is invalid or revoked; create one with `kiln token create`",
        )
    };
    let token = bearer_token(header)?;
    let rest = token.strip_prefix("kiln_").ok_or_else(invalid)?;
    let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric())
        || secret.is_empty()
        || secret.len() > MAX_SECRET_LEN
    {
        return Err(invalid());
    }
    let record = state
        .store()
        .token(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(invalid)?;
    if record.revoked_at.is_some() {
        return Err(invalid());
    }
    let guard = state.auth();
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let stored: [u8; 32] = Sha256::digest(record.secret_hash.as_bytes()).into();
    if !guard.is_verified(&key, &record.id, &stored) {
        let lock = guard.verifying(&key);
        let verified = verify(guard, &lock, &key, &record, secret, stored).await;
        guard.done_verifying(&key, lock);
        verified?;
    }
    let mut claims: HashSet<Claim> = record
        .claims
        .iter()
        .filter_map(|c| Claim::parse(c).ok())
        .collect();
    claims.extend(state.roles().expand(&record.roles).unwrap_or_default());
    Ok(Caller {
        name: record.name,
        claims,
    })
}

/// Checks `secret` against the token's stored hash (once per token at a time: under `lock`,
/// and not at all when a request that held it verified the token meanwhile) and remembers it.
async fn verify(
    guard: &AuthGuard,
    lock: &tokio::sync::Mutex<()>,
    key: &[u8; 32],
    record: &kiln_store::TokenRecord,
    secret: &str,
    stored: [u8; 32],
) -> Result<(), ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "the bearer token is invalid or revoked; create one with `kiln token create`",
        )
    };
    let _one = lock.lock().await;
    if guard.is_verified(key, &record.id, &stored) {
        return Ok(());
    }
    {
        let attempt = guard.begin(&record.id).map_err(|wait| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "token id `{}` is locked after {} failed authentications; retry in {secs} s \
                     with the right token",
                    record.id, guard.max_failures
                ),
            )
            .with_retry_after(secs)
        })?;
        let permit = guard
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)?;
        let (hash, secret) = (record.secret_hash.clone(), secret.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            PasswordHash::new(&hash).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .map_err(ApiError::internal)?;
        attempt.finish(ok);
        if !ok {
            return Err(invalid());
        }
        guard.remember(*key, &record.id, stored);
    }
    Ok(())
}

/// Middleware on every API route: puts the [`Caller`] into the request, or answers 401 for a
/// token that is present but invalid. (A missing token is answered by [`require`].)
pub async fn authenticate_layer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // The API description is public, whatever token comes with the request.
    if req.uri().path().ends_with("/openapi.json") {
        return Ok(next.run(req).await);
    }
    if state.insecure() {
        req.extensions_mut().insert(Caller {
            name: "anonymous".into(),
            claims: Claim::ALL.into_iter().collect(),
        });
    } else if let Some(value) = req.headers().get(axum::http::header::AUTHORIZATION) {
        let header = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let caller = authenticate(&state, header).await?;
        req.extensions_mut().insert(caller);
    }
    Ok(next.run(req).await)
}

/// Route layer: the endpoint needs a valid token, whatever its claims.
pub async fn require_token(req: Request, next: Next) -> Result<Response, ApiError> {
    match req.extensions().get::<Caller>() {
        None => Err(ApiError::unauthorized(
            "this endpoint needs a bearer token: `Authorization: Bearer <token>` (create one with `kiln token create`)",
        )),
        Some(_) => Ok(next.run(req).await),
    }
}

/// Route layer: the endpoint needs `claim`.
pub async fn require(claim: Claim, req: Request, next: Next) -> Result<Response, ApiError> {
    match req.extensions().get::<Caller>() {
        None => Err(ApiError::unauthorized(
            "this endpoint needs a bearer token: `Authorization: Bearer <token>` (create one with `kiln token create`)",
        )),
        Some(c) if !c.claims.contains(&claim) => Err(ApiError::forbidden(format!(
            "token `{}` lacks the claim {} that this endpoint needs",
            c.name,
            claim.as_str()
        ))),
        Some(_) => Ok(next.run(req).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_roles_and_cycles_are_rejected() {
        let roles = Roles::default();
        let admin = roles.expand(&["admin".into()]).unwrap();
        assert_eq!(admin.len(), 5);
        let viewer = roles.expand(&["viewer".into()]).unwrap();
        assert_eq!(viewer, HashSet::from([Claim::ViewTrainingRuns]));
        let err = Roles::parse(
            "roles:\n  a: {includes: [b]}\n  b: {includes: [a]}\n",
            Path::new("r.yaml"),
        )
        .unwrap_err();
        assert!(err.contains("includes itself"), "{err}");
        assert!(
            roles
                .expand(&["nobody".into()])
                .unwrap_err()
                .contains("unknown role")
        );
        // A cycle further down is named from where it starts.
        let err = Roles::parse(
            "roles:\n  top: {includes: [a]}\n  a: {includes: [b]}\n  b: {includes: [c]}\n  c: {includes: [a]}\n",
            Path::new("r.yaml"),
        )
        .unwrap_err();
        assert!(
            err.contains("role `a` includes itself (a -> b -> c -> a)"),
            "{err}"
        );
    }

    #[test]
    fn roles_reached_many_ways_are_expanded_once() {
        // r0 includes r1 twice over (through x and y), and so on down: 2^60 paths, 180 roles.
        let mut text = "roles:\n  r60: {claims: [ViewTrainingRuns]}\n".to_owned();
        for i in 0..60 {
            text.push_str(&format!(
                "  r{i}: {{includes: [x{i}, y{i}]}}\n  x{i}: {{includes: [r{n}]}}\n  y{i}: {{includes: [r{n}]}}\n",
                n = i + 1
            ));
        }
        let roles = Roles::parse(&text, Path::new("r.yaml")).unwrap();
        assert_eq!(
            roles.expand(&["r0".into()]).unwrap(),
            HashSet::from([Claim::ViewTrainingRuns])
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in [
            "Bearer t",
            "bearer t",
            "BEARER t",
            "bEaReR   t ",
            "Bearer\tt",
        ] {
            assert_eq!(bearer_token(h).unwrap(), "t", "{h:?}");
        }
        for h in ["Basic t", "Bearer", "Bearer ", "bearert", "Bearer  ", "t"] {
            assert_eq!(bearer_token(h).unwrap_err().code, "unauthorized", "{h:?}");
        }
    }

    #[test]
    fn failures_lock_an_id_out_and_success_resets() {
        let guard = AuthGuard::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            guard.begin("a").unwrap().finish(false);
        }
        let wait = guard.begin("a").err().expect("locked after 3 failures");
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        // Other ids are not affected.
        guard.begin("b").unwrap().finish(true);
        // Reservations in flight count: a burst cannot start more than the limit.
        let a = guard.begin("c").unwrap();
        let b = guard.begin("c").unwrap();
        let c = guard.begin("c").unwrap();
        assert!(guard.begin("c").is_err());
        drop(a); // cancelled: its reservation is released, and it is no failure
        b.finish(false);
        c.finish(true);
        assert!(guard.failures.lock().unwrap().get("c").is_none());
    }

    #[test]
    fn maps_stay_bounded() {
        let guard = AuthGuard::new(3, Duration::from_secs(60));
        for i in 0..MAX_ENTRIES + 50 {
            guard.begin(&format!("id{i}")).unwrap().finish(false);
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            guard.remember(key, "x", [0; 32]);
        }
        assert!(guard.failures.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(guard.verified.lock().unwrap().len() <= MAX_ENTRIES);
    }

    #[test]
    fn claims_parse_by_name() {
        assert_eq!(
            Claim::parse("viewtrainingruns").unwrap(),
            Claim::ViewTrainingRuns
        );
        assert!(Claim::parse("Root").unwrap_err().contains("claims:"));
    }
}
