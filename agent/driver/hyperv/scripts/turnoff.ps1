    $vm = Get-VM -Id $p.id
    Stop-VM -VM $vm -TurnOff -Force
    Out-FerryResult @{ vms = @(Get-FerryVMInfo (Get-VM -Id $p.id)) }
