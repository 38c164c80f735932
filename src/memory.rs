//! The process's memory: returning what a large, short-lived structure (a resync's listing of
//! a million servers) freed to the system, so that the next one does not stack on top of it;
//! and bounding the allocator's arenas.

/// Gives the pages the allocator holds free back to the system (glibc's `malloc_trim`);
/// nothing elsewhere.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc gives threads malloc arenas of their own, up to eight per core, and keeps what each
/// freed: the database drivers' threads and the runtime's would each hold a listing's worth of
/// freed memory, making the daemon's resident size vary from run to run. Two arenas keep it
/// steady (as `MALLOC_ARENA_MAX=2` does, which still overrides this).
pub fn bound_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called first thing in
        // `main`, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
