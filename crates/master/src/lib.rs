//! The dispatch master daemon and operator CLI. Remote execution, the job cache, the
//! scheduler and the key registry arrive with their issues; today the `dispatch` binary
//! offers the broker alone (`dispatch broker`).
