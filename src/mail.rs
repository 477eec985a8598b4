//! Outgoing mail (password resets). SMTP through lettre when `SMTP_URL` is set; otherwise, in
//! development, the mail is written to the log so a developer can follow the link.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{Config, Environment};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
    /// Development without SMTP: the mail, link included, goes to the log.
    Log,
    /// Production without SMTP: nothing can be sent; a warning without the link is logged.
    Disabled,
    /// Keeps mail in memory, for tests and embedders that deliver it themselves.
    Memory(Arc<Mutex<Vec<OutgoingMail>>>),
}

impl Mailer {
    pub fn from_config(config: &Config) -> anyhow::Result<Mailer> {
        match &config.mail.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("SMTP_URL is not a valid smtp:// or smtps:// URL")?
                    .build()
                    .into();
                let from = config
                    .mail
                    .from
                    .parse()
                    .context("MAIL_FROM is not a valid mailbox")?;
                Ok(Mailer::Smtp { transport, from })
            }
            None if config.env == Environment::Production => Ok(Mailer::Disabled),
            None => Ok(Mailer::Log),
        }
    }

    pub async fn send(&self, mail: OutgoingMail) -> anyhow::Result<()> {
        match self {
            Mailer::Smtp { transport, from } => {
                let message = Message::builder()
                    .from(from.clone())
                    .to(mail.to.parse().context("recipient address")?)
                    .subject(mail.subject)
                    .body(mail.body)
                    .context("building the mail")?;
                transport.send(message).await.context("SMTP delivery")?;
                Ok(())
            }
            Mailer::Log => {
                tracing::warn!(
                    to = %mail.to,
                    subject = %mail.subject,
                    "SMTP_URL is not set; mail not sent. It reads:\n{}",
                    mail.body
                );
                Ok(())
            }
            Mailer::Disabled => {
                tracing::warn!(subject = %mail.subject, "SMTP_URL is not set; mail dropped");
                Ok(())
            }
            Mailer::Memory(outbox) => {
                if let Ok(mut outbox) = outbox.lock() {
                    outbox.push(mail);
                }
                Ok(())
            }
        }
    }
}
