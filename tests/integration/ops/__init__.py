"""Operations: the HTTP endpoint, signals, test-user, and the deployment files."""
