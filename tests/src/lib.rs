//! The test harness shared by the end-to-end tests: builds fixture workers (C, C++, C#) once per
//! test run, packs them as `.nupkg`, and starts real daemons on loopback ports.
