//! `kastell keys`: rotate, retire and shred tenant keys; make, list, rotate to
//! and retire master keys; file and approve dual-control requests.

use clap::Subcommand;

use super::startup::{start, tokio_runtime, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Make a new key version for a tenant and re-wrap its data keys (images are not
    /// re-encrypted); older versions stay readable.
    Rotate {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Destroy one superseded key version once no object uses it any more.
    Retire {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        version: u32,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Destroy every key of a tenant: its images become unreadable for good
    /// (crypto-shredding, the GDPR erasure path). Asks for --yes.
    Shred {
        #[arg(long)]
        tenant: String,
        /// Confirm that the data is to be destroyed.
        #[arg(long)]
        yes: bool,
        /// Under dual control: a file holding your administrator API key (or set
        /// KASTELL_ADMIN_KEY); the shredding is then filed as a request for a
        /// second administrator to approve.
        #[arg(long)]
        admin_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Make master key <MASTER> of keys.masters where it is configured: a
    /// non-extractable key generated inside the HSM, or a new key file.
    CreateMaster {
        master: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Re-wrap every tenant key (and the audit chain key) under the master the
    /// configuration assigns it (keys.active_master, keys.tenant_masters): a
    /// master key rotation, or a file → HSM migration. Resumable: run it again
    /// after an interruption. The server keeps running.
    RotateMaster {
        /// At most this many keys per second (HSMs limit their callers).
        #[arg(long)]
        rate: Option<u32>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the master keys: provider, holder, extractability, keys wrapped.
    Masters {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Retire master key <MASTER> once nothing references it (the HSM key object
    /// is destroyed). Under dual control, filed as a request.
    RetireMaster {
        master: String,
        #[arg(long)]
        admin_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Approve (and so carry out) a dual-control request filed by another
    /// administrator.
    Approve {
        request: i64,
        #[arg(long)]
        admin_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the dual-control requests waiting for approval.
    Requests {
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub fn run(outer: &CommonArgs, action: KeysAction) -> anyhow::Result<()> {
    match action {
        KeysAction::Rotate { tenant, common } => rotate(&merge(outer, &common), &tenant),
        KeysAction::Retire {
            tenant,
            version,
            common,
        } => retire(&merge(outer, &common), &tenant, version),
        KeysAction::Shred {
            tenant,
            yes,
            admin_key_file,
            common,
        } => shred(&merge(outer, &common), &tenant, yes, admin_key_file),
        KeysAction::CreateMaster { master, common } => {
            let config = start(&merge(outer, &common), Start::writing("make a master key"))?.config;
            let what = kastell::ops::custody::create_master(&config, &master)?;
            println!("master key {master}: {what}");
            Ok(())
        }
        KeysAction::RotateMaster { rate, common } => {
            let config = start(
                &merge(outer, &common),
                Start::writing("rotate the master key"),
            )?
            .config;
            let report = kastell::ops::custody::rotate_master(&config, rate, |line| {
                println!("moved {line}")
            })?;
            println!(
                "{} keys moved to their master, {} already there, {} changed meanwhile, {} failed",
                report.moved,
                report.already,
                report.raced,
                report.failed.len()
            );
            for (what, error) in &report.failed {
                println!("  failed {what}: {error}");
            }
            if report.failed.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("some keys were not moved; run the rotation again")
            }
        }
        KeysAction::Masters { common } => masters(&merge(outer, &common)),
        KeysAction::RetireMaster {
            master,
            admin_key_file,
            common,
        } => retire_master(&merge(outer, &common), &master, admin_key_file),
        KeysAction::Approve {
            request,
            admin_key_file,
            common,
        } => approve(&merge(outer, &common), request, admin_key_file),
        KeysAction::Requests { common } => {
            let config = start(&merge(outer, &common), Start::LOGGED)?.config;
            for request in kastell::ops::dual_control::pending(&config)? {
                println!(
                    "request {}: {} {} filed by {}, expires at {} (Unix time)",
                    request.request_id,
                    request.action,
                    request.target,
                    request.requested_by,
                    request.expires_at
                );
            }
            Ok(())
        }
    }
}

/// The administrator's API key: from `--admin-key-file`, else `KASTELL_ADMIN_KEY`.
pub(super) fn admin_key(file: Option<std::path::PathBuf>) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => Ok(Some(
            std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
                .trim()
                .to_string(),
        )),
        None => Ok(std::env::var("KASTELL_ADMIN_KEY").ok()),
    }
}

fn masters(common: &CommonArgs) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    for master in kastell::ops::custody::masters(&config)? {
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not stated",
        };
        println!(
            "master {}{}{}: {} ({})",
            master.name,
            if master.active { " (active)" } else { "" },
            if master.retired { " (retired)" } else { "" },
            master.description,
            master.kind
        );
        match &master.facts {
            Ok(facts) => println!(
                "  holder: {}\n  extractable: {}\n  sensitive: {}\n  never extractable: {}",
                facts.holder,
                yes_no(facts.extractable),
                yes_no(facts.sensitive),
                yes_no(facts.never_extractable)
            ),
            Err(error) => println!("  holder cannot be asked: {error}"),
        }
        println!("  keys wrapped: {}", master.references);
        if !master.tenants.is_empty() {
            println!("  held for tenants: {}", master.tenants.join(", "));
        }
    }
    Ok(())
}

fn retire_master(
    common: &CommonArgs,
    master: &str,
    admin_key_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use kastell::ops::dual_control::{self, RETIRE_MASTER};
    let config = start(common, Start::writing("retire a master key"))?.config;
    let index = kastell::app::open_index(&config)?;
    if let Some(refusal) = kastell::ops::custody::retire_refusal(&config, &index, master)? {
        anyhow::bail!(refusal);
    }
    if dual_control::required(&config, &index, RETIRE_MASTER, master)? {
        let request = dual_control::file(
            &config,
            RETIRE_MASTER,
            master,
            admin_key(admin_key_file)?.as_deref(),
        )?;
        println!(
            "request {} filed: retiring master key {master} needs a second administrator: \
             `kastell keys approve {}`",
            request.request_id, request.request_id
        );
        return Ok(());
    }
    let detail = kastell::ops::custody::retire_master(&config, master, None)?;
    println!("master key {master} retired: {detail}");
    Ok(())
}

fn approve(
    common: &CommonArgs,
    request: i64,
    admin_key_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use kastell::ops::dual_control::{self, RETIRE_MASTER, SHRED_TENANT};
    // What an approval carries out destroys keys (an erasure path, like `keys
    // shred`): the jurisdiction policy does not hold it back.
    let config = start(common, Start::LOGGED)?.config;
    // A shredding that retention or a legal hold would refuse does not spend
    // the approval: the request stays pending until it can be carried out.
    let index = kastell::app::open_index(&config)?;
    if let Some(filed) = index.key_request(request)? {
        if filed.action == SHRED_TENANT {
            let blocked = tokio_runtime()?
                .block_on(kastell::ops::keys::shred_blocked(&config, &filed.target))?;
            if let Some(refusal) = blocked {
                anyhow::bail!("request {request} cannot be carried out now: {refusal}");
            }
        }
    }
    let (approved, approver) =
        dual_control::approve(&config, request, admin_key(admin_key_file)?.as_deref())?;
    match approved.action.as_str() {
        SHRED_TENANT => {
            let erased = tokio_runtime()?.block_on(kastell::ops::keys::shred_tenant(
                &config,
                &approved.target,
                Some(&approver),
            ))?;
            println!(
                "request {request} approved by {approver}: tenant {} shredded; {} studies ({} \
                 instances) erased from the index",
                approved.target, erased.studies, erased.instances
            );
        }
        RETIRE_MASTER => {
            let detail =
                kastell::ops::custody::retire_master(&config, &approved.target, Some(&approver))?;
            println!(
                "request {request} approved by {approver}: master key {} retired: {detail}",
                approved.target
            );
        }
        other => anyhow::bail!("request {request} is for an unknown action {other}"),
    }
    Ok(())
}

fn rotate(common: &CommonArgs, tenant: &str) -> anyhow::Result<()> {
    let config = start(common, Start::writing("rotate a key"))?.config;
    let report =
        tokio_runtime()?.block_on(kastell::ops::keys::rotate_tenant_key(&config, tenant))?;
    println!(
        "tenant {tenant}: new key {}; {} data keys re-wrapped, {} already current, {} metadata records re-wrapped, {} de-identification project secrets re-wrapped, {} failed",
        report.new_key,
        report.rewrapped,
        report.already_current,
        report.records_rewrapped,
        report.projects_rewrapped,
        report.failed.len()
    );
    for (blob, error) in &report.failed {
        println!("  failed {blob}: {error}");
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("some data keys were not re-wrapped; run the rotation again")
    }
}

fn retire(common: &CommonArgs, tenant: &str, version: u32) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    let checked = tokio_runtime()?.block_on(kastell::ops::keys::retire_tenant_key(
        &config, tenant, version,
    ))?;
    println!("tenant {tenant}: key version {version} destroyed ({checked} objects checked, none used it)");
    Ok(())
}

fn shred(
    common: &CommonArgs,
    tenant: &str,
    yes: bool,
    admin_key_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use kastell::ops::dual_control::{self, SHRED_TENANT};
    let config = start(common, Start::LOGGED)?.config;
    if !yes {
        anyhow::bail!(
            "shredding destroys every image of tenant {tenant} for good; repeat with --yes"
        );
    }
    let index = kastell::app::open_index(&config)?;
    if dual_control::required(&config, &index, SHRED_TENANT, tenant)? {
        let request = dual_control::file(
            &config,
            SHRED_TENANT,
            tenant,
            admin_key(admin_key_file)?.as_deref(),
        )?;
        println!(
            "request {} filed: shredding tenant {tenant} needs a second administrator's \
             approval within {} s: `kastell keys approve {}`",
            request.request_id, config.keys.dual_control.window_secs, request.request_id
        );
        return Ok(());
    }
    let erased =
        tokio_runtime()?.block_on(kastell::ops::keys::shred_tenant(&config, tenant, None))?;
    println!(
        "tenant {tenant}: every key destroyed; its images can no longer be read; \
         {} studies ({} instances) erased from the index, their UIDs kept for 410 Gone",
        erased.studies, erased.instances
    );
    Ok(())
}
