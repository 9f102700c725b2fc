//! A master key inside an HSM, through PKCS#11 (`cryptoki`): a non-extractable,
//! sensitive AES-256 key object in a token. Tenant keys are encrypted and
//! decrypted by the token (CKM_AES_GCM, a random 96-bit IV, the key's context as
//! additional authenticated data): the master key never enters Kastell's memory.
//!
//! Configured by an RFC 7512 URL:
//! `pkcs11:token=<label>;object=<key label>?module-path=<lib.so>&pin-source=file:<path>`
//! (`slot-id=<n>` instead of `token`; the PIN may also come from `pin_file` or
//! `pin_env`; a `pin-value` in the URL is refused, so that no secret sits in
//! the configuration).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::crypto::keys::{random, KEY_LEN};
use crate::crypto::{CryptoError, KeyProvider, SecretKey};

use super::{read_secret, KeyFacts, SecretSource};

/// What a wrapped key starts with: the format (`P`) and its version.
const MAGIC: [u8; 2] = [b'P', 1];
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = MAGIC.len() + IV_LEN + KEY_LEN + TAG_LEN;
/// Idle sessions kept open for later calls.
const IDLE_SESSIONS: usize = 8;
/// Looks for the token this many times, 100 ms apart, at start.
const FIND_TOKEN_ATTEMPTS: usize = 20;

/// The slot holding the token `token`, if the module lists it.
fn find_slot(context: &Pkcs11, token: &TokenRef) -> Result<Option<Slot>, CryptoError> {
    let slots = context
        .get_slots_with_token()
        .map_err(|e| unavailable("listing the HSM's slots", e))?;
    let mut failure = None;
    for slot in slots {
        let info = match context.get_token_info(slot) {
            Ok(info) => info,
            Err(error) => {
                failure = Some(unavailable("reading a token of the HSM", error));
                continue;
            }
        };
        let matches = match token {
            TokenRef::SlotId(id) => slot.id() == *id,
            TokenRef::Label(label) => info.label().trim_end() == label,
        };
        if matches && info.token_initialized() {
            return Ok(Some(slot));
        }
    }
    failure.map_or(Ok(None), Err)
}

/// Which token: by label or by slot number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    Label(String),
    SlotId(u64),
}

/// A parsed `pkcs11:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Url {
    pub module: PathBuf,
    pub token: TokenRef,
    pub object: String,
    pub pin_file: Option<PathBuf>,
}

impl Pkcs11Url {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("pkcs11:")
            .ok_or("a PKCS#11 URL starts with pkcs11:")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let decode = |value: &str| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
        };
        let (mut token, mut slot, mut object, mut module, mut pin_file) =
            (None, None, None, None, None);
        for attribute in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| format!("{attribute:?} is not name=value"))?;
            match name {
                "token" => token = Some(decode(value)?),
                "slot-id" => {
                    slot = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("slot-id {value:?} is not a number"))?,
                    )
                }
                "object" => object = Some(decode(value)?),
                // Attributes that narrow the choice further are accepted as given.
                "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "type"
                | "id" => {}
                other => return Err(format!("unknown PKCS#11 URL attribute {other:?}")),
            }
        }
        for attribute in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| format!("{attribute:?} is not name=value"))?;
            match name {
                "module-path" => module = Some(PathBuf::from(decode(value)?)),
                "pin-source" => {
                    let source = decode(value)?;
                    let path = source.strip_prefix("file:").unwrap_or(&source);
                    pin_file = Some(PathBuf::from(path));
                }
                "pin-value" => {
                    return Err("a PIN in the URL is refused: use pin-source=file:<path>, \
                                pin_file or pin_env"
                        .into())
                }
                other => return Err(format!("unknown PKCS#11 URL query attribute {other:?}")),
            }
        }
        let token = match (token, slot) {
            (Some(label), None) => TokenRef::Label(label),
            (None, Some(slot)) => TokenRef::SlotId(slot),
            _ => {
                return Err("name the token by exactly one of token=<label> or slot-id=<n>".into())
            }
        };
        Ok(Self {
            module: module.ok_or("module-path=<the PKCS#11 library> is required")?,
            token,
            object: object.ok_or("object=<the key's label> is required")?,
            pin_file,
        })
    }
}

/// One loaded module per library path: PKCS#11 allows one `C_Initialize` per
/// process and library, and two masters may sit in two tokens of one HSM.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Pkcs11>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn module(path: &PathBuf) -> Result<Arc<Pkcs11>, CryptoError> {
    let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let context = Pkcs11::new(path).map_err(|e| {
        CryptoError::Unavailable(format!(
            "loading the PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable("initialising the PKCS#11 module", e)),
    }
    let context = Arc::new(context);
    modules.insert(path.clone(), context.clone());
    Ok(context)
}

fn unavailable(what: &str, error: P11Error) -> CryptoError {
    CryptoError::Unavailable(format!("{what}: {}", short(&error)))
}

/// The error's name (`DeviceRemoved`), not the specification's paragraph that
/// `cryptoki` displays for it.
fn short(error: &P11Error) -> String {
    match error {
        P11Error::Pkcs11(rv, function) => format!("{function:?} answered {rv:?}"),
        other => other.to_string(),
    }
}

pub struct Pkcs11Master {
    name: String,
    url: Pkcs11Url,
    context: Arc<Pkcs11>,
    slot: Slot,
    pin: AuthPin,
    sessions: Mutex<Vec<Session>>,
    key: Mutex<Option<ObjectHandle>>,
}

impl Pkcs11Master {
    /// Opens the token (the key itself is looked for on first use, so that a
    /// master can be configured before `kastell keys create-master` makes it).
    pub fn open(name: &str, url: &str, pin: &SecretSource) -> Result<Self, CryptoError> {
        let url = Pkcs11Url::parse(url)
            .map_err(|e| CryptoError::KeyStore(format!("keys.masters.{name}.url: {e}")))?;
        let pin = match &url.pin_file {
            Some(path) => read_secret(&SecretSource::File(path.clone()))?,
            None => read_secret(pin)?,
        };
        let context = module(&url.module)?;
        // A file-backed software token (SoftHSM) read while another process
        // rewrites it is skipped at C_Initialize ("token integrity check
        // failed"), and the slot list is only read then: when the token is
        // missing and no other master uses the module, it is initialised
        // again, a few times, before the token is declared absent.
        let mut slot = None;
        let mut failure = None;
        for attempt in 0..FIND_TOKEN_ATTEMPTS {
            match find_slot(&context, &url.token) {
                Ok(found) => slot = found,
                Err(error) => failure = Some(error),
            }
            if slot.is_some() || attempt + 1 == FIND_TOKEN_ATTEMPTS {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            if Arc::strong_count(&context) == 2 {
                let _ = (*context).clone().finalize();
                context
                    .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                    .map_err(|e| unavailable("initialising the PKCS#11 module again", e))?;
            }
        }
        let slot = match (slot, failure) {
            (Some(slot), _) => slot,
            (None, Some(error)) => return Err(error),
            (None, None) => {
                return Err(CryptoError::Unavailable(format!(
                    "no initialised token {:?} in the PKCS#11 module {}",
                    url.token,
                    url.module.display()
                )))
            }
        };
        let master = Self {
            name: name.to_string(),
            url,
            context,
            slot,
            pin: AuthPin::from(pin.as_str()),
            sessions: Mutex::new(Vec::new()),
            key: Mutex::new(None),
        };
        // Log in now: a wrong PIN stops the start, not the first request.
        master.with_session(|_| Ok(()))?;
        Ok(master)
    }

    fn open_session(&self) -> Result<Session, CryptoError> {
        let session = self
            .context
            .open_rw_session(self.slot)
            .map_err(|e| unavailable("opening an HSM session", e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e @ P11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLocked, _)) => {
                Err(CryptoError::Unavailable(format!(
                    "the HSM refuses the PIN of master key {}: {}",
                    self.name,
                    short(&e)
                )))
            }
            Err(e) => Err(unavailable("logging in to the HSM", e)),
        }
    }

    /// Runs `work` on an idle session (or a new one); a session an error may have
    /// broken is closed rather than kept, and the work tried again on a new one
    /// (twice more, 50 and 100 ms later) when the failure came at once: a token
    /// can fail for a moment (a SoftHSM token file another process is rewriting
    /// at its login). A failure that took a while (a network HSM timing out) is
    /// not retried: waiting for a dead device three times helps no one.
    fn with_session<T>(
        &self,
        mut work: impl FnMut(&Session) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        const QUICK_FAILURE: std::time::Duration = std::time::Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            match self.once_with_session(&mut work) {
                Err(CryptoError::Unavailable(_))
                    if attempt < 2 && started.elapsed() < QUICK_FAILURE =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
                }
                result => return result,
            }
        }
    }

    fn once_with_session<T>(
        &self,
        work: &mut impl FnMut(&Session) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        let idle = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let session = match idle {
            Some(session) => session,
            None => self.open_session()?,
        };
        let result = work(&session);
        if !matches!(result, Err(CryptoError::Unavailable(_))) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.len() < IDLE_SESSIONS {
                sessions.push(session);
            }
        }
        result
    }

    fn find_key(&self, session: &Session) -> Result<ObjectHandle, CryptoError> {
        if let Some(handle) = *self.key.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(handle);
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(self.url.object.as_bytes().to_vec()),
        ];
        let found = session
            .find_objects(&template)
            .map_err(|e| unavailable("looking for the master key in the HSM", e))?;
        match found.as_slice() {
            [handle] => {
                *self.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(*handle);
                Ok(*handle)
            }
            [] => Err(CryptoError::Revoked(format!(
                "there is no key {:?} in the HSM token {:?} (master key {})",
                self.url.object, self.url.token, self.name
            ))),
            _ => Err(CryptoError::KeyStore(format!(
                "{} keys are labelled {:?} in the HSM token: the label must name one",
                found.len(),
                self.url.object
            ))),
        }
    }

    /// What an error of a call with the key means; a stale key handle is
    /// forgotten so the next call looks the key up again.
    fn classify(&self, what: &str, error: P11Error) -> CryptoError {
        match &error {
            P11Error::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                *self.key.lock().unwrap_or_else(|e| e.into_inner()) = None;
                CryptoError::Unavailable(format!("{what}: {}", short(&error)))
            }
            P11Error::Pkcs11(
                RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent,
                _,
            ) => CryptoError::Revoked(format!(
                "the HSM refuses to use master key {} ({})",
                self.name,
                short(&error)
            )),
            P11Error::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _) => {
                CryptoError::Integrity("a wrapped key does not open with this key and context")
            }
            _ => CryptoError::Unavailable(format!("{what}: {}", short(&error))),
        }
    }

    /// Makes the master key inside the token: AES-256, generated there,
    /// sensitive and never extractable. Refused when the label is taken.
    pub fn create_key(&self) -> Result<(), CryptoError> {
        self.with_session(|session| {
            let existing = session
                .find_objects(&[Attribute::Label(self.url.object.as_bytes().to_vec())])
                .map_err(|e| unavailable("looking for the master key in the HSM", e))?;
            if !existing.is_empty() {
                return Err(CryptoError::KeyStore(format!(
                    "the HSM token already holds an object labelled {:?}",
                    self.url.object
                )));
            }
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen((KEY_LEN as u64).into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Label(self.url.object.as_bytes().to_vec()),
            ];
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| unavailable("generating the master key in the HSM", e))?;
            Ok(())
        })
    }

    /// Destroys the key object (retiring a master key nothing references).
    pub fn destroy_key(&self) -> Result<(), CryptoError> {
        self.with_session(|session| {
            let handle = self.find_key(session)?;
            session
                .destroy_object(handle)
                .map_err(|e| unavailable("destroying the master key in the HSM", e))?;
            *self.key.lock().unwrap_or_else(|e| e.into_inner()) = None;
            Ok(())
        })
    }

    /// The key's attributes and the token, as the HSM reports them.
    pub fn facts(&self) -> Result<KeyFacts, CryptoError> {
        let info = self
            .context
            .get_token_info(self.slot)
            .map_err(|e| unavailable("reading the HSM token", e))?;
        self.with_session(|session| {
            let handle = self.find_key(session)?;
            let attributes = session
                .get_attributes(
                    handle,
                    &[
                        AttributeType::Extractable,
                        AttributeType::Sensitive,
                        AttributeType::NeverExtractable,
                    ],
                )
                .map_err(|e| self.classify("reading the master key's attributes", e))?;
            let flag = |wanted: AttributeType| {
                attributes.iter().find_map(|a| match (a, wanted) {
                    (Attribute::Extractable(v), AttributeType::Extractable)
                    | (Attribute::Sensitive(v), AttributeType::Sensitive)
                    | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable) => Some(*v),
                    _ => None,
                })
            };
            // A value of a sensitive key cannot be read: asked for anyway, to show it.
            let value_readable = session
                .get_attributes(handle, &[AttributeType::Value])
                .map(|values| {
                    values
                        .iter()
                        .any(|v| matches!(v, Attribute::Value(bytes) if !bytes.is_empty()))
                })
                .unwrap_or(false);
            Ok(KeyFacts {
                holder: format!(
                    "HSM token {:?} ({} {}, serial {}), key {:?}",
                    info.label().trim_end(),
                    info.manufacturer_id().trim_end(),
                    info.model().trim_end(),
                    info.serial_number().trim_end(),
                    self.url.object
                ),
                extractable: flag(AttributeType::Extractable).map(|e| e || value_readable),
                sensitive: flag(AttributeType::Sensitive),
                never_extractable: flag(AttributeType::NeverExtractable),
            })
        })
    }
}

impl KeyProvider for Pkcs11Master {
    fn wrap_tenant_key(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut iv = random::<IV_LEN>()?;
        let sealed = self.with_session(|session| {
            let handle = self.find_key(session)?;
            let params = GcmParams::new(&mut iv, context, (TAG_LEN as u64 * 8).into())
                .map_err(|_| CryptoError::KeyMaterial("GCM parameters"))?;
            session
                .encrypt(&Mechanism::AesGcm(params), handle, key.expose())
                .map_err(|e| self.classify("wrapping a key in the HSM", e))
        })?;
        if sealed.len() != KEY_LEN + TAG_LEN {
            return Err(CryptoError::KeyStore(format!(
                "the HSM answered {} bytes for a wrapped key",
                sealed.len()
            )));
        }
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(&MAGIC);
        wrapped.extend_from_slice(&iv);
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    fn unwrap_tenant_key(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, CryptoError> {
        if wrapped.len() != WRAPPED_LEN || wrapped[..MAGIC.len()] != MAGIC {
            return Err(CryptoError::Format(
                "not a key wrapped by a PKCS#11 master key",
            ));
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped[MAGIC.len()..MAGIC.len() + IV_LEN]);
        let sealed = &wrapped[MAGIC.len() + IV_LEN..];
        let plain = Zeroizing::new(self.with_session(|session| {
            let handle = self.find_key(session)?;
            let params = GcmParams::new(&mut iv, context, (TAG_LEN as u64 * 8).into())
                .map_err(|_| CryptoError::KeyMaterial("GCM parameters"))?;
            session
                .decrypt(&Mechanism::AesGcm(params), handle, sealed)
                .map_err(|e| self.classify("unwrapping a key in the HSM", e))
        })?);
        SecretKey::from_bytes(&plain)
    }

    fn describe(&self) -> String {
        format!(
            "HSM key {:?} in token {:?} through {}",
            self.url.object,
            self.url.token,
            self.url.module.display()
        )
    }

    fn kind(&self) -> &'static str {
        "pkcs11"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_module_token_object_and_pin_source_never_a_pin() {
        let url = Pkcs11Url::parse(
            "pkcs11:token=Kastell%20HSM;object=master-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/kastell/pin",
        )
        .unwrap();
        assert_eq!(url.token, TokenRef::Label("Kastell HSM".into()));
        assert_eq!(url.object, "master-1");
        assert_eq!(url.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(url.pin_file, Some(PathBuf::from("/etc/kastell/pin")));
        let slot = Pkcs11Url::parse("pkcs11:slot-id=3;object=k?module-path=/m.so").unwrap();
        assert_eq!(slot.token, TokenRef::SlotId(3));
        for bad in [
            "pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234",
            "pkcs11:token=t?module-path=/m.so",
            "pkcs11:object=k?module-path=/m.so",
            "pkcs11:token=t;slot-id=1;object=k?module-path=/m.so",
            "pkcs11:token=t;object=k",
            "pkcs11:token=t;object=k;colour=blue?module-path=/m.so",
            "pkcs11:slot-id=x;object=k?module-path=/m.so",
            "file:/x",
        ] {
            assert!(Pkcs11Url::parse(bad).is_err(), "{bad}");
        }
    }
}
