//! Bearer tokens, claims and roles.
//!
//! A token is `kiln_<id>_<secret>`; only an Argon2id hash of the secret is stored, and the token
//! is shown once, when created. A token carries claims directly and through roles; roles are
//! defined in `configs/roles.yaml` and may include other roles. No or an invalid token is 401,
//! a valid token without the endpoint's claim is 403.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let file: RolesFile =
            serde_norway::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let roles = Self { roles: file.roles };
        for name in roles.roles.keys() {
            roles
                .expand(std::slice::from_ref(name))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(roles)
    }

    pub fn names(&self) -> Vec<&str> {
        self.roles.keys().map(String::as_str).collect()
    }

    /// All claims granted by `names`, following `includes`.
    pub fn expand(&self, names: &[String]) -> Result<HashSet<Claim>, String> {
        let mut claims = HashSet::new();
        let mut stack: Vec<(String, Vec<String>)> =
            names.iter().map(|n| (n.clone(), vec![])).collect();
        while let Some((name, path)) = stack.pop() {
            if path.contains(&name) {
                return Err(format!(
                    "role `{name}` includes itself ({} -> {name})",
                    path.join(" -> ")
                ));
            }
            let role = self.roles.get(&name).ok_or_else(|| {
                format!("unknown role `{name}`; roles: {}", self.names().join(", "))
            })?;
            claims.extend(role.claims.iter().copied());
            let mut next = path.clone();
            next.push(name.clone());
            stack.extend(role.includes.iter().map(|i| (i.clone(), next.clone())));
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

/// Verified tokens, so Argon2 runs once per token and process (revocation is still checked on
/// every request).
#[derive(Default)]
pub struct VerifiedCache(Mutex<HashMap<[u8; 32], Instant>>);

const CACHE_TTL: Duration = Duration::from_secs(300);

async fn authenticate(state: &AppState, header: &str) -> Result<Caller, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "the bearer token is invalid or revoked; create one with `kiln token create`",
        )
    };
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::unauthorized("use `Authorization: Bearer <token>`"))?
        .trim();
    let rest = token.strip_prefix("kiln_").ok_or_else(invalid)?;
    let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
    let record = state
        .store()
        .token(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(invalid)?;
    if record.revoked_at.is_some() {
        return Err(invalid());
    }
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let cached = {
        let cache = state.verified().0.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&key).is_some_and(|t| t.elapsed() < CACHE_TTL)
    };
    if !cached {
        let hash = PasswordHash::new(&record.secret_hash).map_err(|_| invalid())?;
        Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .map_err(|_| invalid())?;
        state
            .verified()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Instant::now());
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
