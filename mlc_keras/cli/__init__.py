"""What the command lines share: grouped --help and one-line errors."""
