//! The interactive prompt of a server started in a terminal, with the
//! Python server's commands (`users`, `kick <user>`, `exit`) and a few more.

use std::io::{BufRead, Write};

use tokio::sync::oneshot;

use super::{AdminRequest, save_text, users_table};
use crate::control::{Control, ControlSender};

pub const PROMPT: &str = ">> ";

const HELP: &str = "commands:
  users         who is online, with admin flag and latency
  kick <user>   disconnect a user
  save          write a snapshot now
  exit          save and stop the server
  help          this list";

/// Starts the prompt on a thread of its own; it reads stdin until `exit`
/// or end of input.
pub fn start(requests: ControlSender) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shell".into())
        .spawn(move || run(requests, std::io::stdin().lock(), std::io::stdout()))?;
    Ok(())
}

fn ask<T>(requests: &ControlSender, make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    if !requests.send(Control::Admin(make(tx))) {
        return None;
    }
    rx.blocking_recv().ok()
}

/// What one line of input answers; None when the shell must end.
fn answer(requests: &ControlSender, line: &str) -> Option<String> {
    const STOPPING: &str = "the server is stopping";
    let mut words = line.split_whitespace();
    let reply = match (words.next(), words.next()) {
        (None, _) => String::new(),
        (Some("users"), _) => ask(requests, AdminRequest::Status)
            .map(|s| users_table(&s.users))
            .unwrap_or_else(|| STOPPING.into()),
        (Some("kick"), None) => "usage: kick <user>".into(),
        (Some("kick"), Some(_)) => {
            // Names may hold spaces: everything after the command.
            let user = line
                .trim_start()
                .strip_prefix("kick")
                .unwrap_or_default()
                .trim()
                .to_string();
            match ask(requests, |reply| AdminRequest::Kick {
                user: user.clone(),
                reply,
            }) {
                Some(true) => format!("kicked {user}"),
                Some(false) => format!("no user named {user:?} is online"),
                None => STOPPING.into(),
            }
        }
        (Some("save"), _) => match ask(requests, AdminRequest::Save) {
            Some(Ok(report)) => save_text(&report),
            Some(Err(e)) => format!("the save failed: {e}"),
            None => STOPPING.into(),
        },
        (Some("exit" | "quit"), _) => {
            requests.send(Control::Admin(AdminRequest::Stop));
            return None;
        }
        (Some("help" | "?"), _) => HELP.into(),
        (Some(other), _) => format!("unknown command {other:?}; type help"),
    };
    Some(reply)
}

fn run(requests: ControlSender, input: impl BufRead, mut output: impl Write) {
    let mut lines = input.lines();
    loop {
        let _ = write!(output, "{PROMPT}");
        let _ = output.flush();
        let line = match lines.next() {
            Some(Ok(line)) => line,
            Some(Err(_)) | None => {
                let _ = writeln!(output, "\nshell closed; the server keeps running (Ctrl-C stops it)");
                return;
            }
        };
        match answer(&requests, &line) {
            Some(reply) if reply.is_empty() => {}
            Some(reply) => {
                let _ = writeln!(output, "{reply}");
            }
            None => return,
        }
    }
}
