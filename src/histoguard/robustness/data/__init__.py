"""The embeddings and tile datasets the audit measures, and the loaders for the layouts users
bring (tile tables, class folders, Camelyon17-WILDS, MedMNIST, feature files + cohort)."""
