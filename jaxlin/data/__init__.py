"""Data: the tutorial's splits, checked arrays and sources (`datasets`), the validating IDX reader
(`idx`), verified downloads into jaxlin's cache (`download`), and opening user-named files without
hanging on them (`files`)."""
