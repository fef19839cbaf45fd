    $vms = Find-FerryVM $p.name
    Out-FerryResult @{ vms = @($vms | ForEach-Object { Get-FerryVMInfo $_ }) }
