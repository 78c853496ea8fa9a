//! The command line, declared with clap's derive API.
//!
//! Secrets (Fernet keys, tokens, AES keys) are taken as plain strings and
//! checked by the commands, so that a bad value is reported without being
//! echoed back. Every value flag accepts values starting with `-`: about one
//! Fernet key in 64 does, and base64 tokens may too.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use snitun::Cipher;

/// SniTun: reach a device behind NAT through a public server that routes
/// callers' TLS by SNI; TLS stays end to end.
#[derive(Debug, Parser)]
#[command(name = "snitun", version, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the public server: SNI port for callers, peer port for devices
    /// (or both on one port with --listen).
    Server(ServerArgs),
    /// Run a client peer: connect to the server and serve every routed
    /// caller by connecting it to a local endpoint.
    Client(ClientArgs),
    /// Mint a token for a device (the session master's job); prints JSON.
    Token(TokenArgs),
    /// Print a fresh Fernet key (URL-safe base64).
    Keygen,
    /// Run server, client peer and an HTTPS endpoint on loopback, and prove
    /// the tunnel with real HTTPS requests.
    Demo(DemoArgs),
}

/// `snitun server`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("ports")
        .required(true)
        .multiple(true)
        .args(["sni", "peer", "listen"])
))]
pub struct ServerArgs {
    /// Fernet key(s) that open device tokens; repeat for key rotation (the
    /// first one mints). The variable may list several, comma-separated.
    #[arg(
        long = "fernet-key",
        value_name = "KEY",
        env = "SNITUN_FERNET_KEYS",
        hide_env_values = true,
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    pub fernet_keys: Vec<String>,

    /// Address for callers' TLS (dual-port mode; needs --peer). Repeatable.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        value_parser = parse_socket_addr,
        requires = "peer",
        allow_hyphen_values = true
    )]
    pub sni: Vec<SocketAddr>,

    /// Address for devices (dual-port mode; needs --sni). Repeatable.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        value_parser = parse_socket_addr,
        requires = "sni",
        allow_hyphen_values = true
    )]
    pub peer: Vec<SocketAddr>,

    /// Address taking both callers and devices (single-port mode).
    /// Repeatable.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        value_parser = parse_socket_addr,
        conflicts_with_all = ["sni", "peer"],
        allow_hyphen_values = true
    )]
    pub listen: Vec<SocketAddr>,

    /// Expect a PROXY protocol (v1 or v2) header on every accepted
    /// connection; only behind a trusted proxy.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// Limit each peer link to N large messages per second.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_hyphen_values = true
    )]
    pub throttling: Option<u32>,

    /// Worker threads of the runtime (default: one per CPU).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..),
        allow_hyphen_values = true
    )]
    pub workers: Option<u16>,

    /// Every N seconds, print a JSON line of statistics to stdout (peers,
    /// channels, tasks, limit refusals) for monitoring and soak tests.
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_hyphen_values = true
    )]
    pub stats_interval: Option<u32>,
}

/// `snitun client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's peer port (or single port).
    #[arg(long, value_name = "HOST:PORT", allow_hyphen_values = true)]
    pub server: String,

    /// The token minted for this device (relayed as is).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SNITUN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: String,

    /// The tunnel's AES-256 key, 64 hex digits (the token's aes_key).
    #[arg(
        long,
        value_name = "HEX",
        env = "SNITUN_AES_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub aes_key: String,

    /// The tunnel's IV, 32 hex digits (the token's aes_iv).
    #[arg(
        long,
        value_name = "HEX",
        env = "SNITUN_AES_IV",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub aes_iv: String,

    /// Where each routed caller is connected to.
    #[arg(long, value_name = "HOST:PORT", allow_hyphen_values = true)]
    pub endpoint: String,

    /// Multiplexer protocol version (as in the token).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u8).range(0..=2),
        allow_hyphen_values = true
    )]
    pub protocol_version: u8,

    /// Tunnel cipher (as in the token).
    #[arg(long, value_enum, default_value_t = CipherArg::AesCbc, allow_hyphen_values = true)]
    pub cipher: CipherArg,

    /// Only accept callers from these networks (CIDR or address);
    /// repeatable.
    #[arg(
        long,
        value_name = "CIDR",
        value_parser = parse_net,
        conflicts_with = "block",
        allow_hyphen_values = true
    )]
    pub allow: Vec<IpNet>,

    /// Refuse callers from these networks (CIDR or address); repeatable.
    #[arg(
        long,
        value_name = "CIDR",
        value_parser = parse_net,
        allow_hyphen_values = true
    )]
    pub block: Vec<IpNet>,

    /// Limit the link to N large messages per second.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_hyphen_values = true
    )]
    pub throttling: Option<u32>,

    /// Exit when the connection is lost instead of reconnecting with
    /// back-off.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// `snitun token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Fernet key to mint with (the first, if repeated). The variable may
    /// list several, comma-separated.
    #[arg(
        long = "fernet-key",
        value_name = "KEY",
        env = "SNITUN_FERNET_KEYS",
        hide_env_values = true,
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    pub fernet_keys: Vec<String>,

    /// The device's hostname, matched against callers' SNI.
    #[arg(long, value_name = "HOST", allow_hyphen_values = true)]
    pub hostname: String,

    /// A further hostname served by the same device; repeatable.
    #[arg(long = "alias", value_name = "HOST", allow_hyphen_values = true)]
    pub aliases: Vec<String>,

    /// Lifetime of the token in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 86_400,
        allow_hyphen_values = true
    )]
    pub valid: u64,

    /// Tunnel cipher the device will use.
    #[arg(long, value_enum, default_value_t = CipherArg::AesCbc, allow_hyphen_values = true)]
    pub cipher: CipherArg,

    /// Multiplexer protocol version the device will use.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u8).range(0..=2),
        allow_hyphen_values = true
    )]
    pub protocol_version: u8,
}

/// `snitun demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the bulk download (bytes; K, M, G suffixes are powers of
    /// 1024).
    #[arg(
        long,
        value_name = "N",
        default_value = "32M",
        value_parser = parse_size,
        allow_hyphen_values = true
    )]
    pub bytes: u64,

    /// Tunnel cipher.
    #[arg(long, value_enum, default_value_t = CipherArg::AesCbc, allow_hyphen_values = true)]
    pub cipher: CipherArg,

    /// Multiplexer protocol version.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u8).range(0..=2),
        allow_hyphen_values = true
    )]
    pub protocol_version: u8,

    /// Run the server on one port for callers and devices.
    #[arg(long)]
    pub single_port: bool,
}

/// The tunnel ciphers, by their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(
    clippy::enum_variant_names,
    reason = "the variant names spell the wire names aes-cbc, aes-gcm, aes-gcm-siv"
)]
pub enum CipherArg {
    /// AES-256-CBC stream (default; the only cipher of older peers).
    AesCbc,
    /// AES-256-GCM.
    AesGcm,
    /// AES-256-GCM-SIV.
    AesGcmSiv,
}

impl From<CipherArg> for Cipher {
    fn from(arg: CipherArg) -> Cipher {
        match arg {
            CipherArg::AesCbc => Cipher::AesCbc,
            CipherArg::AesGcm => Cipher::AesGcm,
            CipherArg::AesGcmSiv => Cipher::AesGcmSiv,
        }
    }
}

/// An `ADDR:PORT` to listen on: an IP literal (`[::]:443` for IPv6), or a
/// host name resolved now (its first address).
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err("expected ADDR:PORT, e.g. 0.0.0.0:443 or [::]:443".into());
    }
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| "the name has no address".into())
}

/// A network in CIDR form, or a single address (a /32 or /128).
fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "expected a network such as 192.168.0.0/16 or an address".into())
}

/// A byte count with an optional K/M/G suffix (powers of 1024; `KiB`,
/// `MiB`, `GiB` and a trailing `B` are accepted too).
fn parse_size(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    let (digits, suffix) = upper.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| "expected a byte count such as 1048576, 64K or 32M".to_string())?;
    let unit: u64 = match suffix.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err("unknown size suffix (use K, M or G)".into()),
    };
    number
        .checked_mul(unit)
        .filter(|n| *n > 0)
        .ok_or_else(|| "size must be between 1 byte and 16 EiB".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("3T").is_err());
    }

    #[test]
    fn networks() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("nope").is_err());
    }
}
