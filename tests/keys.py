"""Well-formed OpenSSH public keys for records in tests (records refuse malformed ones)."""

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFsaWNlLWVkMjU1MTktcHVibGljLWtleS0zMmJ5dGUh"
ED25519_OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJiYmItZWQyNTUxOS1wdWJsaWMta2V5LTMyYnl0ZSEh"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAEGJvYi1yc2EtbW9kdWx1cyE="
