"""Network definitions. Module attribute names follow the original (CompVis/LDM) checkpoint keys, so a single-file
checkpoint loads with one `load_state_dict` and no conversion table."""
