"""Data: the validating IDX reader and the tutorial's splits (`datasets`), verified downloads into
jaxlin's cache (`download`), and opening user-named files without hanging on them (`files`)."""
