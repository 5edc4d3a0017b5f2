"""AMD SEV-SNP: report ABI, VCEK/VLEK chains to pinned ARKs, policy, collection."""
