//! `reelfarm token` and `reelfarm undrain`: what admins and operators do to the farm itself,
//! as opposed to its sequences.

use anyhow::Result;
use clap::{Args, Subcommand};
use reelfarm_common::pb;

use super::{Client, SchedulerArgs, UndrainArgs, table};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (the only time its secret is shown).
    Create(CreateArgs),
    /// List the tokens: id, name, tenant, role, age (never secrets).
    List(ListArgs),
    /// Revoke a token by id or name; it stops working at once.
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Unique name of the holder (a person, a pipeline, a worker): letters, digits, - _ .
    #[arg(long)]
    name: String,
    /// Whose sequences the holder submits and sees.
    #[arg(long)]
    tenant: String,
    /// submitter, operator, admin or worker.
    #[arg(long, default_value = "submitter")]
    role: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The token's id or name, as `reelfarm token list` shows them.
    token: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

pub async fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            let request = pb::CreateTokenRequest {
                name: args.name.clone(),
                tenant: args.tenant,
                role: args.role,
            };
            let created = client
                .call(&format!("creating token {}", args.name), |mut grpc| {
                    let request = request.clone();
                    async move { grpc.create_token(request).await }
                })
                .await?;
            // The token alone on stdout, for `> file`; what it is on stderr.
            println!("{}", created.secret_token);
            if let Some(info) = created.token {
                eprintln!(
                    "token {} ({}): {} of tenant {}; keep it secret, it is not shown again",
                    info.name, info.id, info.role, info.tenant
                );
            }
            Ok(())
        }
        TokenCommand::List(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            let listed = client
                .call("listing tokens", |mut grpc| async move {
                    grpc.list_tokens(pb::ListTokensRequest {}).await
                })
                .await?;
            let now = reelfarm_common::unix_now_s();
            let rows = listed
                .tokens
                .iter()
                .map(|token| {
                    vec![
                        token.id.clone(),
                        token.name.clone(),
                        token.tenant.clone(),
                        token.role.clone(),
                        super::format_seconds(now - token.created_unix_s),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["ID", "NAME", "TENANT", "ROLE", "AGE"], rows)
            );
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            let token = args.token;
            let revoked = client
                .call(&format!("revoking token {token}"), |mut grpc| {
                    let request = pb::RevokeTokenRequest {
                        token: token.clone(),
                    };
                    async move { grpc.revoke_token(request).await }
                })
                .await?;
            if let Some(info) = revoked.token {
                println!("revoked {} ({})", info.name, info.id);
            }
            Ok(())
        }
    }
}

pub async fn undrain(args: UndrainArgs) -> Result<()> {
    let mut client = Client::connect(&args.scheduler).await?;
    let worker = args.worker;
    let undrained = client
        .call(&format!("undraining {worker}"), |mut grpc| {
            let request = pb::DrainWorkerRequest {
                worker: worker.clone(),
            };
            async move { grpc.undrain_worker(request).await }
        })
        .await?;
    for status in undrained.workers {
        println!("{} takes new work again", status.worker_id);
    }
    Ok(())
}
