//! The dispatch master daemon and the operator CLI (`dispatch`).
//!
//! - [`cli`]: the command line, parsed into a plan, and the exit codes;
//! - [`daemon`]: `dispatch master`, its embedded broker and serving loops;
//! - [`registry`]: the key registry as files; [`authority`]: the registry as the
//!   embedded broker's gatekeeper; [`key_requests`]: key requests over an external
//!   broker;
//! - [`topology`]: the exchanges and queues the master owns;
//! - [`rpc`]: the signed request/response API; [`results`]: verifying minion replies;
//! - [`jobs`]: resolving, publishing and following runs; [`store`]: the SQLite job
//!   store; [`history`]: job lookups, listings, `--wait` and retention;
//!   [`presence`]: the minions' announcements;
//! - [`schedule`]: cron schedules and the pure firing decision; [`scheduler`]: the task
//!   that fires them;
//! - [`client`]: the CLI's side of the RPC API; [`key_cmd`]: `dispatch key …`;
//!   [`run_cmd`]: `dispatch run` (plan, submit, wait, summary); [`returns`]: one
//!   minion's return as JSON and text; [`minions_cmd`]:
//!   `dispatch minions`; [`job_cmd`]: `dispatch job`; [`jobs_cmd`]: `dispatch jobs`;
//!   [`events_cmd`]: `dispatch events`; [`schedule_cmd`]: `dispatch schedule …`;
//!   [`render`]: tables and times for people;
//! - [`tasks`]: tracked background tasks; [`layout`]: the data dir and every default.

pub mod authority;
pub mod cli;
pub mod client;
pub mod connected;
pub mod daemon;
pub mod events_cmd;
pub mod history;
pub mod job_cmd;
pub mod jobs;
pub mod jobs_cmd;
pub mod key_cmd;
pub mod key_requests;
pub mod layout;
pub mod minions_cmd;
pub mod presence;
pub mod registry;
pub mod render;
pub mod results;
pub mod returns;
pub mod rpc;
pub mod run_cmd;
pub mod schedule;
pub mod schedule_cmd;
pub mod scheduler;
pub mod store;
pub mod tasks;
pub mod topology;
