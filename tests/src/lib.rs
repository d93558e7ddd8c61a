//! Integration-test harness: starts farms on loopback and checks videos with ffprobe.
